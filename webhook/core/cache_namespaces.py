"""Where an ImageCache may be used from (DESIGN.md, "Credentials"), and where its pull
secrets may be read from. Both the webhook's index and the controller decide with these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ALL = "*"  # pull-secret namespaces: every namespace


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def secret_namespaces(spec: Mapping[str, Any]) -> frozenset[str]:
    """The namespaces of spec.imagePullSecrets (namespace/name)."""
    return frozenset(s.partition("/")[0] for s in _strings(spec.get("imagePullSecrets")))


def usable_namespaces(spec: Mapping[str, Any]) -> frozenset[str] | None:
    """The namespaces whose pods may use the cache; None: every namespace.

    Images pulled with a secret stay with the namespaces that hold the secrets:
    spec.namespaces narrows that, never widens it. Without secrets, spec.namespaces or all.
    """
    listed = frozenset(_strings(spec.get("namespaces"))) or None
    if _strings(spec.get("imagePullSecrets")):
        secrets = secret_namespaces(spec)
        return secrets if listed is None else secrets & listed
    return listed


def refused_pull_secret(
    spec: Mapping[str, Any], allowed: Sequence[str], own: str
) -> tuple[int, str] | None:
    """The first pull secret (index, namespace/name) the controller may not read: only its
    own namespace and `allowed` (["*"]: any) are open to it."""
    if ALL in allowed:
        return None
    for index, ref in enumerate(_strings(spec.get("imagePullSecrets"))):
        namespace = ref.partition("/")[0]
        if namespace != own and namespace not in allowed:
            return index, ref
    return None
