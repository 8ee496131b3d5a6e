"""Names and labels of what the controller creates for an ImageCache.

Kubernetes limits names (253 characters, 63 for a Job: its pods carry the name as a label)
and label values (63): a long cache name is cut and a short hash of the whole name keeps the
result unique. Everything a build makes carries the build id, a hash of the spec fields
that change the cache disk's content, so a changed spec builds beside the served snapshot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from webhook.core import names

MANAGED_BY, MANAGER = names.MANAGED_BY, names.MANAGER
CACHE_LABEL = names.CACHE  # imagecache.dev/cache, on pods (webhook) and on what we own
BUILD_OF_LABEL = f"{names.GROUP}/build-of"  # builder pods: not CACHE, that selects user pods
BUILD_LABEL = f"{names.GROUP}/build"
COMPONENT_LABEL = f"{names.GROUP}/component"
CACHE_ANNOTATION = f"{names.GROUP}/cache-name"  # the full name when the label had to be cut
RESULT_ANNOTATION = f"{names.GROUP}/build-result"  # on the primary snapshot
CACHE_UID_ANNOTATION = f"{names.GROUP}/cache-uid"  # on copies: whose they are
REBUILD_ANNOTATION = f"{names.GROUP}/rebuild"  # any new value forces a rebuild
SERVE_CREDENTIALED_ANNOTATION = f"{names.GROUP}/serve-credentialed"
FINALIZER = f"{names.GROUP}/cleanup"
EVENT_SOURCE = "imagecache-controller"

BUILDER = "builder"
SIZER = "sizer"
PULL_SECRET = "pull-secret"
DISK = "disk"
PRIMARY = "primary"
COPY = "copy"

NAME_MAX = 253
LABEL_MAX = 63
JOB_MAX = 63


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bounded(text: str, limit: int) -> str:
    """`text` if it fits, else a prefix and a hash of the whole, still a valid DNS name."""
    if len(text) <= limit:
        return text
    digest = short_hash(text)
    return f"{text[: limit - len(digest) - 1].rstrip('-.')}-{digest}"


def label_value(cache: str) -> str:
    return bounded(cache, LABEL_MAX)


def build_id(spec: Mapping[str, Any], annotations: Mapping[str, str], size: str) -> str:
    """Hash of what decides the disk's content. retentionDays and namespaces are left out:
    changing them must not rebuild. `size` is the resolved disk size ('auto' when sized)."""
    keyed = {
        "images": sorted(str(i) for i in spec.get("images") or []),
        "platforms": sorted(str(p) for p in spec.get("platforms") or []),
        "insecure": sorted(str(r) for r in spec.get("insecureRegistries") or []),
        "secrets": sorted(str(s) for s in spec.get("imagePullSecrets") or []),
        "storageClass": spec.get("storageClassName") or "",
        "snapshotClass": spec.get("volumeSnapshotClassName") or "",
        "size": size,
        "rebuild": annotations.get(REBUILD_ANNOTATION, ""),
        "serveCredentialed": annotations.get(SERVE_CREDENTIALED_ANNOTATION, ""),
    }
    return short_hash(json.dumps(keyed, sort_keys=True), 10)


def job_name(cache: str, bid: str) -> str:
    return bounded(f"imagecache-build-{cache}-{bid}", JOB_MAX)


def sizer_name(cache: str, bid: str) -> str:
    return bounded(f"imagecache-size-{cache}-{bid}", JOB_MAX)


def pvc_name(cache: str, bid: str) -> str:
    return bounded(f"imagecache-{cache}-{bid}", NAME_MAX)


def secret_name(cache: str, bid: str) -> str:
    return bounded(f"imagecache-pull-{cache}-{bid}", NAME_MAX)


def primary_name(cache: str, bid: str) -> str:
    """The primary VolumeSnapshot, in the controller's namespace. It has the build id in its
    name, unlike a copy (`imagecache-<cache>`), so a rebuild makes a new one beside it."""
    return bounded(f"imagecache-{cache}-{bid}", NAME_MAX)


def copy_name(cache: str, bid: str) -> str:
    """A copy in a pod's namespace: per build, so a rebuild's copy is made beside the one
    pods are cloning, and switched to once ready (status.namespaces names the current one).
    Never in the controller's namespace, where the primary has this name."""
    return primary_name(cache, bid)


def copy_content_name(uid: str, cache: str, namespace: str, bid: str) -> str:
    """Cluster-scoped, so unique across caches and namespaces: a hash of the cache's uid,
    the namespace and the build (the readable prefix is only for people)."""
    digest = short_hash(f"{uid}/{namespace}/{bid}", 20)
    return f"{bounded(f'imagecache-{cache}', NAME_MAX - len(digest) - 1)}-{digest}"


def pod_event_name(pod: str, uid: str) -> str:
    """One name per pod: creating it a second time fails, so a pod gets its event once."""
    return bounded(f"{pod}.imagecache-{uid[:8]}", NAME_MAX)


def labels(cache: str, component: str, bid: str | None = None) -> dict[str, str]:
    result = {MANAGED_BY: MANAGER, CACHE_LABEL: label_value(cache), COMPONENT_LABEL: component}
    if bid is not None:
        result[BUILD_LABEL] = bid
    return result


def builder_pod_labels(cache: str, component: str, bid: str) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGER,
        BUILD_OF_LABEL: label_value(cache),
        COMPONENT_LABEL: component,
        BUILD_LABEL: bid,
    }
