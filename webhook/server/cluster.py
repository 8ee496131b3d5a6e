"""The cache index from the cluster: kubeconfig loading and the ImageCache LIST+WATCH."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from webhook.core import names
from webhook.server.cache_watch import WatchOptions, WatchTarget, list_and_watch

IMAGECACHES = WatchTarget(names.GROUP, names.VERSION, names.PLURAL)


class ClusterConfigError(Exception):
    """No way to reach the apiserver; the message says what was tried."""


async def api_client(kubeconfig: str | None) -> Any:
    """An ApiClient from `kubeconfig`, else the in-cluster service account, else the default
    kubeconfig (KUBECONFIG or ~/.kube/config)."""
    # Imported here: kubernetes_asyncio takes longer to import than the rest together, and
    # `serve --caches FILE` never needs it.
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "in-cluster or default kubeconfig"
        raise ClusterConfigError(
            f"cannot configure the Kubernetes client ({where}): {exc}; pass --kubeconfig FILE, "
            "or --caches FILE to serve from a file"
        ) from None
    return client.ApiClient(configuration)


async def watch_caches(
    api: Any,
    *,
    on_replace: Callable[[list[Mapping[str, Any]]], None],
    on_event: Callable[[str, Mapping[str, Any]], None],
    logger: logging.Logger,
    options: WatchOptions | None = None,
) -> None:
    await list_and_watch(
        api, IMAGECACHES, on_replace=on_replace, on_event=on_event, logger=logger, options=options
    )
