"""The cache index from the cluster: the ImageCache LIST+WATCH (webhook.kube) feeding it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from webhook.kube.client import IMAGECACHE, Kube
from webhook.kube.client import ClusterConfigError as ClusterConfigError
from webhook.kube.informer import ListWatch, WatchOptions


async def watch_caches(
    kube: Kube,
    *,
    on_replace: Callable[[list[Mapping[str, Any]]], None],
    on_event: Callable[[str, Mapping[str, Any]], None],
    logger: logging.Logger,
    options: WatchOptions | None = None,
) -> None:
    """Until cancelled: every LIST -> `on_replace(items)`, every event -> `on_event`."""
    await ListWatch(
        kube, IMAGECACHE, on_replace=on_replace, on_event=on_event, logger=logger, options=options
    ).run()
