"""`imagecache snapshotter configure` (written below)."""

from __future__ import annotations

from pathlib import Path


def configure(config: Path, socket: str, drop_in: Path | None) -> int:
    raise NotImplementedError
