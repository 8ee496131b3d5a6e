"""Where a registry's API lives and how to talk to it: host, scheme, paths, error bodies."""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote

from webhook.core.imageref import DOCKER_HUB

DOCKER_HUB_API = "registry-1.docker.io"


def api_host(registry: str) -> str:
    """The host[:port] serving /v2/ for a normalized registry name."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def is_insecure(registry: str, insecure: Iterable[str]) -> bool:
    """Whether `registry` (host[:port]) was listed as insecure. A listed host without a
    port covers every port of that host; docker.io and its API host are one registry."""
    host = registry.lower()
    names = {host, api_host(host)}
    bare = {n.rsplit(":", 1)[0] if not n.endswith("]") else n for n in names}
    for entry in insecure:
        item = entry.strip().lower().removeprefix("http://").removeprefix("https://").rstrip("/")
        if item in names or (":" not in item.strip("[]") and item in bare):
            return True
    return False


def manifest_path(repository: str, reference: str) -> str:
    return f"/v2/{repository}/manifests/{quote(reference, safe=':')}"


def blob_path(repository: str, digest: str) -> str:
    return f"/v2/{repository}/blobs/{digest}"


def registry_error_summary(body: bytes, limit: int = 300) -> str:
    """`CODE: message` from a distribution error body, or the start of the text."""
    try:
        doc = json.loads(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return f"{first.get('code', 'UNKNOWN')}: {first.get('message', '')}"[:limit]
    except ValueError:
        pass
    text = body[:limit].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def registry_error_codes(body: bytes) -> set[str]:
    try:
        doc = json.loads(body)
    except ValueError:
        return set()
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return set()
    return {str(e.get("code")) for e in errors if isinstance(e, dict)}
