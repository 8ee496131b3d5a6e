"""What a build has to write, given the manifests it resolved: pure bookkeeping.

A blob shared by several images (a common base layer) is stored once; the per-image size
still counts it for each image, as the image's own footprint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from webhook.core.registry_manifest import Descriptor, ManifestDoc, is_foreign


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    descriptor: Descriptor  # media type, digest and size as stored
    body: bytes
    doc: ManifestDoc


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    argument: str  # the --image value as given
    reference: str  # normalized; index.json's ref.name
    top: FetchedManifest  # what the reference resolved to (an index for multi-arch)
    platform_manifests: tuple[FetchedManifest, ...] = ()  # chosen from `top` when an index

    @property
    def manifests(self) -> tuple[FetchedManifest, ...]:
        return (self.top, *self.platform_manifests)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Configs and layers to download, once each, foreign layers left out."""
        seen: dict[str, Descriptor] = {}
        for manifest in self.manifests:
            doc = manifest.doc
            for descriptor in (doc.config, *doc.layers):
                if descriptor is not None and not is_foreign(descriptor):
                    seen.setdefault(descriptor.digest, descriptor)
        return tuple(seen.values())

    @property
    def size(self) -> int:
        """Bytes stored for this image: its manifests, configs and layers."""
        manifests = {m.descriptor.digest: m.descriptor.size for m in self.manifests}
        return sum(manifests.values()) + sum(b.size for b in self.blobs)


@dataclass(frozen=True, slots=True)
class Plan:
    manifests: tuple[FetchedManifest, ...]  # every manifest and index, once
    fetch: tuple[Descriptor, ...]  # blobs not on disk yet, once each
    reuse: tuple[Descriptor, ...]  # blobs already on disk and verified
    bytes_to_write: int

    @property
    def bytes_to_fetch(self) -> int:
        return sum(d.size for d in self.fetch)


def plan_build(images: Sequence[ResolvedImage], present: Iterable[str]) -> Plan:
    """`present`: digests of blobs already stored (a resumed build)."""
    on_disk = set(present)
    manifests: dict[str, FetchedManifest] = {}
    blobs: dict[str, Descriptor] = {}
    for image in images:
        for manifest in image.manifests:
            manifests.setdefault(manifest.descriptor.digest, manifest)
        for blob in image.blobs:
            blobs.setdefault(blob.digest, blob)
    fetch = tuple(b for b in blobs.values() if b.digest not in on_disk)
    reuse = tuple(b for b in blobs.values() if b.digest in on_disk)
    new_manifests = sum(m.descriptor.size for d, m in manifests.items() if d not in on_disk)
    return Plan(
        tuple(manifests.values()), fetch, reuse, new_manifests + sum(b.size for b in fetch)
    )
