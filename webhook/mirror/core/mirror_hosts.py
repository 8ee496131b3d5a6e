"""containerd's `hosts.toml` for a registry, with the node mirror as its first host.

containerd (`config_path`, one directory per registry under e.g. /etc/containerd/certs.d)
tries the `[host."..."]` tables in file order and the `server` last. `merge_hosts` puts the
mirror first, keeps every other host and top-level key of an existing file, and renders the
result with a small TOML writer (tomllib only reads). Rendering what it rendered gives the
same text, so `imagecache mirror configure` is idempotent.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from webhook.core.imageref import DOCKER_HUB, InvalidReference
from webhook.mirror.core.mirror_routes import normalize_registry

HOSTS_FILE = "hosts.toml"
# containerd asks a host without "resolve" for content by digest only (manifests of
# `name@digest` references, and blobs); tags go to the next host, ending with the registry.
PULL_ONLY = ("pull",)
PULL_AND_RESOLVE = ("pull", "resolve")
# containerd's own default endpoint for Docker Hub; every other registry is its host name.
_HUB_ENDPOINT = "registry-1.docker.io"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class HostsConfigError(ValueError):
    """A flag or an existing hosts.toml that configure cannot use; the message says the fix."""


def parse_hostport(text: str, flag: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); HostsConfigError naming `flag` otherwise."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise HostsConfigError(f"{flag} {text!r} must be HOST:PORT, e.g. 127.0.0.1:5005")
    return host, int(port)


def mirror_url(text: str) -> str:
    """The mirror as containerd's host key: `http(s)://host:port`, no path."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HostsConfigError(f"--mirror {text!r} must be a URL like http://127.0.0.1:5005")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise HostsConfigError(f"--mirror {text!r} must not have a path: containerd adds /v2")
    return f"{parts.scheme}://{parts.netloc}"


def registry_dir(registry: str) -> str:
    """The directory containerd reads for `registry` (its normalized host[:port])."""
    try:
        return normalize_registry(registry)
    except InvalidReference as exc:
        raise HostsConfigError(f"--registry {registry!r} {exc.reason}") from None


def upstream_server(registry: str, plain_http: bool = False) -> str:
    host = _HUB_ENDPOINT if registry == DOCKER_HUB else registry
    return f"{'http' if plain_http else 'https'}://{host}"


def merge_hosts(
    existing: str | None,
    registry: str,
    mirror: str,
    *,
    plain_http: bool = False,
    skip_verify: bool = False,
    resolve: bool = False,
) -> str:
    """The hosts.toml text for `registry`: `existing` (or nothing) with `mirror` first.

    `server` is kept from the existing file unless plain_http asks for http://; skip_verify
    sets `skip_verify = true` for the upstream server (never for the mirror). The mirror
    resolves tags only with `resolve` (a mirror run with --serve-tags)."""
    doc: dict[str, Any] = {}
    if existing is not None:
        try:
            doc = tomllib.loads(existing)
        except tomllib.TOMLDecodeError as exc:
            raise HostsConfigError(
                f"the existing {HOSTS_FILE} for {registry} is not TOML ({exc}): fix or remove it"
            ) from None
    hosts = doc.pop("host", {})
    if not isinstance(hosts, dict):
        raise HostsConfigError(
            f"the existing {HOSTS_FILE} for {registry}: 'host' must be a table of "
            '[host."<url>"] tables: fix or remove it'
        )
    server = doc.pop("server", None)
    if plain_http or not isinstance(server, str):
        server = upstream_server(registry, plain_http)
    top: dict[str, Any] = {"server": server, **doc}
    if skip_verify:
        top["skip_verify"] = True
    ours = dict(hosts.get(mirror) or {})
    ours["capabilities"] = list(PULL_AND_RESOLVE if resolve else PULL_ONLY)
    top["host"] = {mirror: ours, **{url: h for url, h in hosts.items() if url != mirror}}
    return render_toml(top)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(k)} = {_value(v, where)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise HostsConfigError(f"{where}: cannot write a {type(value).__name__} value")


def _table(path: list[str], table: Mapping[str, Any], out: list[str]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    if path and (scalars or not tables):
        if out:
            out.append("")
        out.append("[" + ".".join(_key(p) for p in path) + "]")
    for key, value in scalars:
        out.append(f"{'  ' if path else ''}{_key(key)} = {_value(value, '.'.join([*path, key]))}")
    for key, value in tables:
        _table([*path, key], value, out)


def render_toml(doc: Mapping[str, Any]) -> str:
    """TOML for a document of tables, strings, numbers, booleans, dates and lists."""
    out: list[str] = []
    _table([], doc, out)
    return "\n".join(out) + "\n"
