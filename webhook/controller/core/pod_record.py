"""What the controller keeps of a decided pod (issue 10.8: memory that does not grow with
everything a pod spec holds).

A pod from the API is a few KiB of JSON (spec, status, managedFields) and ten times that as
Python objects; the controller reads only who the pod is, when it was made, its phase, the
webhook's `imagecache.dev/*` labels and annotations, and the snapshot its cache volume
clones. The informer stores this slim record instead (webhook.kube.informer.Informer
`transform`), shaped like a pod so that the readers (`reconcile_model.user_pod_state`, the
index functions) work on either. Strings repeated across thousands of pods (namespaces,
keys, cache names, decisions) are interned.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from webhook.controller.core.reconcile_model import cloned_snapshot
from webhook.core.names import GROUP, VOLUME_NAME

PREFIX = f"{GROUP}/"
METADATA_KEPT = ("name", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp")


def _ours(values: object) -> dict[str, str]:
    """The `imagecache.dev/` entries of a labels or annotations map, interned."""
    if not isinstance(values, Mapping):
        return {}
    return {
        sys.intern(key): sys.intern(value) if len(value) <= 64 else value
        for key, value in values.items()
        if isinstance(key, str) and key.startswith(PREFIX) and isinstance(value, str)
    }


def slim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The slim record of a pod: metadata (name, namespace, uid, resourceVersion, creation
    and deletion times, `imagecache.dev/*` labels and annotations), the `imagecache` volume's
    snapshot, and `status.phase`."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    kept: dict[str, Any] = {key: meta[key] for key in METADATA_KEPT if key in meta}
    namespace = meta.get("namespace")
    if isinstance(namespace, str):
        kept["namespace"] = sys.intern(namespace)
    for field in ("labels", "annotations"):
        ours = _ours(meta.get(field))
        if ours:
            kept[field] = ours
    record: dict[str, Any] = {"metadata": kept}
    snapshot = cloned_snapshot(obj)
    if snapshot is not None:
        # Which snapshot the pod's claim clones: in use until that claim exists (issue 10.2).
        source = {"kind": "VolumeSnapshot", "name": sys.intern(snapshot)}
        template = {"spec": {"dataSource": source}}
        volume = {"name": VOLUME_NAME, "ephemeral": {"volumeClaimTemplate": template}}
        record["spec"] = {"volumes": [volume]}
    status = obj.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    if isinstance(phase, str):
        record["status"] = {"phase": sys.intern(phase)}
    return record
