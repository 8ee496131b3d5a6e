"""Which layer a cache disk's layer sits on, from its imagecache.json: what the snapshotter
needs to make a disk-backed layer's record again when a power cut lost it (its commit is
fsync'd 0.2 s late, webhook.snapshotter.store) while containerd's metadata still names it.

A disk-backed layer's record is named by its chain ID (containerd finds it by the
`containerd.io/snapshot.ref` label) and its parent is the record of the layer below, itself
disk-backed (containerd 1.6 takes layers from a disk from the base up, and downloads every
layer from the first one no disk holds), so both names follow from the chain IDs alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from webhook.core.cachedisk import CachedImage

_CHAIN_NAME = re.compile(r"sha256:([0-9a-f]{64})")


def layer_parents(images: Iterable[CachedImage]) -> dict[str, str]:
    """chain ID hex -> its parent's chain ID hex ("" for a base layer), for each platform's
    layers in order. A layer whose chain ID is not the hash of its parent's and its diff ID
    (a disk that lies about the order) is left out."""
    parents: dict[str, str] = {}
    for image in images:
        below: dict[str, str] = {}  # platform -> chain ID of the layer so far on top
        for layer in image.layers:
            parent = below.get(layer.platform, "")
            below[layer.platform] = layer.chain_id
            expected = ("sha256:" + hashlib.sha256(f"{parent} {layer.diff_id}".encode())
                        .hexdigest()) if parent else layer.diff_id
            own, up = _CHAIN_NAME.fullmatch(layer.chain_id), _CHAIN_NAME.fullmatch(parent)
            if expected == layer.chain_id and own and (up or not parent):
                parents[own.group(1)] = up.group(1) if up else ""
    return parents


def disk_layer_of(name: str) -> str:
    """The chain ID hex a disk-backed layer's record is named by ("" for any other name:
    containerd names its other snapshots `<namespace>/<seq>/<key>`)."""
    match = _CHAIN_NAME.fullmatch(name)
    return match.group(1) if match else ""
