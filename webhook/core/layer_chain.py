"""Layer identities: diff IDs from an image config, chain IDs from diff IDs, and the
unpacked layers an image needs (DESIGN.md, "The cache disk": `/layers/<chainID hex>/`).

chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)): the OCI
image spec's definition, and the name containerd gives a committed layer snapshot (the
`containerd.io/snapshot.ref` label the node snapshotter looks up).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from webhook.core.ocilayout import InvalidDigest, split_digest
from webhook.core.registry_manifest import Descriptor

LAYERS_DIR = "layers"
# Unpacked bytes per compressed byte when nothing better is known: measured 2.8x for a
# realistic distro image (528 MiB unpacked from 188 MiB gzip); 3 leaves some room.
COMPRESSED_RATIO = 3.0


class InvalidConfig(ValueError):
    """An image config without usable `rootfs.diff_ids`."""


def config_diff_ids(body: bytes, where: str) -> tuple[str, ...]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise InvalidConfig(f"{where}: image config is not JSON: {exc}") from None
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidConfig(f"{where}: image config has no rootfs.diff_ids list")
    for d in diff_ids:
        try:
            split_digest(d)
        except InvalidDigest as exc:
            raise InvalidConfig(f"{where}: rootfs.diff_ids: {exc}") from None
    return tuple(diff_ids)


def chain_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode())
                         .hexdigest())
    return tuple(chain)


def layer_dir_name(chain_id: str) -> str:
    """The directory under `/layers/`: the chain ID's hex, no algorithm, no ':'."""
    algorithm, encoded = split_digest(chain_id)
    if algorithm != "sha256":
        raise InvalidDigest(f"chain ID {chain_id!r}: only sha256 chain IDs are stored")
    return encoded


def is_compressed(media_type: str) -> bool:
    return media_type.endswith(("gzip", "zstd")) or media_type.endswith(".tar.gzip")


def estimated_unpacked(descriptor: Descriptor) -> int:
    """Bytes a layer takes unpacked, before it was unpacked: the blob's size, times
    COMPRESSED_RATIO when it is compressed (a tar's size is its content's, near enough)."""
    if is_compressed(descriptor.media_type):
        return int(descriptor.size * COMPRESSED_RATIO)
    return descriptor.size


@dataclass(frozen=True, slots=True)
class ImageLayer:
    """One layer of one platform's image, as imagecache.json records it."""

    digest: str  # the blob in oci/
    media_type: str
    size: int  # the blob's size
    diff_id: str  # sha256 of the uncompressed tar
    chain_id: str  # names /layers/<hex>/


def image_layers(layers: Sequence[Descriptor], diff_ids: Sequence[str],
                 where: str) -> tuple[ImageLayer, ...]:
    if len(layers) != len(diff_ids):
        raise InvalidConfig(f"{where}: the manifest lists {len(layers)} layers but the config "
                            f"{len(diff_ids)} diff_ids")
    return tuple(ImageLayer(d.digest, d.media_type, d.size, diff, chain)
                 for d, diff, chain in zip(layers, diff_ids, chain_ids(diff_ids), strict=True))
