"""What every part's command line shares: help that shows each flag's default."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


def shown(value: Any) -> str:
    """A default as a person would write it on the command line."""
    if value is None or value == [] or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple) and len(value) == 2:  # a parsed HOST:PORT
        return f"{value[0]}:{value[1]}"
    return str(value)


class HelpFormatter(argparse.HelpFormatter):
    """`(default: X)` after every optional flag whose help does not already say its default
    in words; in descriptions and epilogs each line is a paragraph, wrapped, and lines that
    start with spaces (tables, examples) are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if not line.strip() or line.startswith("  "):
                lines.append(indent + line)
            else:
                lines.append(textwrap.fill(line, width, initial_indent=indent,
                                           subsequent_indent=indent, break_on_hyphens=False))
        return "\n".join(lines)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.required
            or not action.option_strings
            or action.default is argparse.SUPPRESS
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: {shown(action.default).replace('%', '%%')})"
