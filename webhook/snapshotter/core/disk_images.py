"""Which of containerd's images came (in part) from a cache disk, for rolling the node
snapshotter back (`imagecache snapshotter forget-images`, docs/snapshotter.md).

A layer the snapshotter took from a cache disk was never downloaded: containerd holds no blob
of it. Once CRI uses another snapshotter again (overlayfs), an image with such a layer counts
as present, yet containerd cannot unpack it for that snapshotter ("content digest ... not
found"), and the kubelet retries CreateContainer forever. Removed, the image is pulled again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

from webhook.core.jsondoc import json_object
from webhook.core.layer_chain import InvalidConfig, chain_ids, config_diff_ids


def status_diff_ids(info: str, image: str) -> tuple[str, ...]:
    """The diff IDs in containerd's verbose CRI ImageStatus (`info["info"]`: JSON whose
    `imageSpec` is the image config)."""
    doc = json_object(info, f"{image}: CRI ImageStatus info", InvalidConfig)
    spec = doc.get("imageSpec")
    if not isinstance(spec, dict):
        raise InvalidConfig(f"{image}: CRI ImageStatus info has no imageSpec (not containerd's "
                            "CRI plugin?)")
    return config_diff_ids(json.dumps(spec).encode(), image)


def images_from_disks(images: Mapping[str, Sequence[str]],
                      disk_layers: AbstractSet[str]) -> list[str]:
    """The images (id -> diff IDs) with a layer whose chain ID is in `disk_layers` (the
    snapshotter's disk-backed layers, `sha256:<hex>`), sorted."""
    return sorted(image for image, diff_ids in images.items()
                  if not disk_layers.isdisjoint(chain_ids(diff_ids)))
