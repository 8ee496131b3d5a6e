"""What the controller creates at run time outside any ImageCache (the webhook's TLS Secret,
the leader Lease) is owned by the controller's Deployment, so that deleting the Deployment
(`helm uninstall`) lets the garbage collector remove them too: nothing is left behind."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from webhook.kube.client import DEPLOYMENT, ApiError, Kube

log = logging.getLogger("imagecache.ownership")
Obj = dict[str, Any]


def owner_reference(deployment: Mapping[str, Any]) -> Obj:
    meta = deployment.get("metadata") or {}
    # blockOwnerDeletion false: no finalizer rights needed, and never delays an uninstall
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": False,
        "blockOwnerDeletion": False,
    }


def with_owner(meta: Mapping[str, Any], owner: Obj | None) -> Obj:
    """`meta` with `owner` among its ownerReferences (unchanged when None or already there)."""
    out = dict(meta)
    if owner is None:
        return out
    refs = [r for r in out.get("ownerReferences") or [] if r.get("uid") != owner["uid"]]
    out["ownerReferences"] = [*refs, owner]
    return out


def lacks_owner(obj: Mapping[str, Any], owner: Obj | None) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return owner is not None and all(r.get("uid") != owner["uid"] for r in refs)


async def read_owner(kube: Kube, namespace: str, name: str | None) -> Obj | None:
    """The ownerReference to Deployment `name`, or None (unset, or unreadable: then the
    objects are made without an owner, as before, and the log says why)."""
    if not name:
        return None
    try:
        return owner_reference(await kube.get(DEPLOYMENT, namespace, name))
    except ApiError as exc:
        log.warning(
            "cannot read Deployment %s/%s to own the TLS Secret and the Lease (%s): "
            "they will outlive the controller; allow get on deployments",
            namespace,
            name,
            exc,
        )
        return None
