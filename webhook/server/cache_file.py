"""The cache index from a YAML file (`--caches FILE`), reloaded when the file changes.

`--caches default` is the small example set embedded in the package (local runs, demos).
A change that does not parse is logged and ignored: the index keeps the last good content.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from webhook.core.caches import parse_cache_documents
from webhook.logs import log
from webhook.server.polling import poll_forever

DEFAULT = "default"
_EMBEDDED = "data/default-caches.yaml"


class CacheFileError(Exception):
    """The caches file cannot be used; the message names the file and the problem."""


def _read(path: Path | None) -> str:
    if path is None:
        return resources.files("webhook").joinpath(_EMBEDDED).read_text(encoding="utf-8")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CacheFileError(f"cannot read --caches {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CacheFileError(f"--caches {path} is not UTF-8 text") from None


def _parse(text: str, name: str) -> list[dict[str, Any]]:
    try:
        return parse_cache_documents(text)
    except ValueError as exc:
        raise CacheFileError(f"--caches {name}: {exc}") from None


class CacheFile:
    """Feeds `replace` with the file's ImageCache objects, now and after every change."""

    def __init__(
        self,
        source: str,
        replace: Callable[[list[Mapping[str, Any]]], None],
        logger: logging.Logger,
    ) -> None:
        self.path = None if source == DEFAULT else Path(source)
        self.name = "default (embedded examples)" if self.path is None else str(self.path)
        self.replace = replace
        self.logger = logger
        self._seen: str | None = None
        self._error: str | None = None

    def load(self) -> int:
        """Read, parse and hand over the file; CacheFileError if it cannot be used."""
        text = _read(self.path)
        self._seen = hashlib.sha256(text.encode()).hexdigest()
        objects = _parse(text, self.name)
        self.replace(list(objects))
        return len(objects)

    def _changed(self) -> list[dict[str, Any]] | None:
        text = _read(self.path)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._seen:
            return None
        self._seen = digest  # a bad version is reported once, not every poll
        return _parse(text, self.name)

    async def check(self) -> None:
        try:
            objects = await asyncio.to_thread(self._changed)
        except CacheFileError as exc:
            if str(exc) != self._error:  # once per problem, not once per poll
                log(
                    self.logger,
                    logging.ERROR,
                    "caches file not reloaded, keeping the previous caches",
                    error=str(exc),
                )
            self._error = str(exc)
            return
        self._error = None
        if objects is not None:
            self.replace(list(objects))
            log(
                self.logger,
                logging.INFO,
                "caches file reloaded",
                file=self.name,
                caches=len(objects),
            )

    async def run(self, interval: float) -> None:
        if self.path is None:
            return  # the embedded file cannot change
        await poll_forever(self.check, interval, self.logger, "caches file")
