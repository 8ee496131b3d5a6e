"""Names that DESIGN.md fixes as the contract between the parts."""

from __future__ import annotations

GROUP = "imagecache.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ImageCache"
PLURAL = "imagecaches"

# Opt-in annotations, in the order they are honoured when a pod carries several.
USE_CACHE = f"{GROUP}/use-image-cache"
TKE_USE_CACHE = "eks.tke.cloud.tencent.com/use-image-cache"
ECI_CACHE_ID = "k8s.aliyun.com/eci-imc-id"
ECI_AUTO = "k8s.aliyun.com/eci-auto-imc"
NAMESPACE_AUTO_LABEL = USE_CACHE  # namespace label imagecache.dev/use-image-cache=auto

# Options.
MATCH = f"{GROUP}/match"
REQUIRED = f"{GROUP}/required"
DISK_SIZE = f"{GROUP}/disk-size"
PIN = f"{GROUP}/pin"  # "false": leave the images as written

# Written by the webhook.
CACHE = f"{GROUP}/cache"  # annotation and label
DECISION = f"{GROUP}/decision"
MISSING_IMAGES = f"{GROUP}/missing-images"
PINNED_IMAGES = f"{GROUP}/pinned-images"  # JSON: container name -> the image it asked for

MIRROR_POD = "kubernetes.io/config.mirror"  # static pods' API copies: never mutated

# On every object the controller makes (builds, snapshots, copies): how other parts tell
# them from look-alikes.
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "imagecache-controller"

VOLUME_NAME = "imagecache"
MOUNT_PATH = "/var/lib/imagecache"
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"


def snapshot_name(cache: str) -> str:
    """The VolumeSnapshot a pod's namespace holds for `cache` (primary or copy)."""
    return f"imagecache-{cache}"
