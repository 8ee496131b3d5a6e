"""`imagecache mirror configure`: write containerd's hosts.toml for each registry.

The text comes from webhook.mirror.core.mirror_hosts.merge_hosts; this module reads the existing
file, and writes the new one atomically (temporary file in the same directory, fsync, rename)
so that containerd, which reads the file on every pull, never sees half of it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from webhook.mirror.core.mirror_hosts import HOSTS_FILE, merge_hosts, mirror_url, registry_dir


@dataclass(frozen=True, slots=True)
class Written:
    registry: str
    path: str
    changed: bool


def write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def configure(
    config_path: str,
    registries: Iterable[str],
    mirror: str,
    *,
    plain_http: Iterable[str] = (),
    skip_verify: Iterable[str] = (),
    resolve: bool = False,
) -> list[Written]:
    """Write `<config_path>/<registry>/hosts.toml` for each registry; idempotent.

    Raises HostsConfigError (bad flag or unreadable existing file) or OSError."""
    url = mirror_url(mirror)
    plain = {registry_dir(r) for r in plain_http}
    insecure = {registry_dir(r) for r in skip_verify}
    results = []
    for registry in dict.fromkeys(registry_dir(r) for r in registries):
        directory = os.path.join(config_path, registry)
        path = os.path.join(directory, HOSTS_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                existing: str | None = f.read()
        except FileNotFoundError:
            existing = None
        text = merge_hosts(existing, registry, url, plain_http=registry in plain,
                           skip_verify=registry in insecure, resolve=resolve)
        if text != existing:
            os.makedirs(directory, exist_ok=True)
            write_atomically(path, text)
        results.append(Written(registry, path, text != existing))
    return results
