"""Manifests and indexes as registries serve them: parsing, and picking platforms.

Docker v2 schema 2 and OCI, images and indexes (manifest lists). Schema 1 is refused with
a message: registries stopped serving it and containerd no longer pulls it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.core.jsondoc import json_object
from webhook.core.ocilayout import InvalidDigest, split_digest

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
# What the builder asks for: every type it can store, images and indexes.
MANIFEST_ACCEPT = ", ".join(
    (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
)


class InvalidManifest(ValueError):
    """A manifest the builder cannot use; the message names the image and what is wrong."""


# containerd's platforms.Normalize spellings, so `linux/aarch64` asks for what `linux/arm64` is.
_ARCH_ALIASES = {"aarch64": ("arm64", ""), "x86_64": ("amd64", ""), "x86-64": ("amd64", ""),
                 "i386": ("386", ""), "armhf": ("arm", "v7"), "armel": ("arm", "v6")}
_DEFAULT_VARIANT = {("arm64", "v8"): "", ("amd64", "v1"): "", ("arm", ""): "v7"}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`os/arch[/variant]`, e.g. `linux/arm64` or `linux/arm/v7`."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(
                f"platform {text!r} must be os/architecture[/variant], e.g. linux/amd64"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "").normalized()

    def normalized(self) -> Platform:
        arch, variant = self.architecture.lower(), self.variant.lower()
        if arch in _ARCH_ALIASES:
            arch, alias_variant = _ARCH_ALIASES[arch]
            variant = variant or alias_variant
        if variant and not variant.startswith("v") and variant.isdigit():
            variant = f"v{variant}"
        variant = _DEFAULT_VARIANT.get((arch, variant), variant)
        return Platform(self.os.lower(), arch, variant)

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ManifestDoc:
    """A parsed manifest (`config` + `layers`) or index (`manifests`)."""

    media_type: str
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = field(default=())

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _descriptor(item: Any, where: str) -> Descriptor:
    if not isinstance(item, dict):
        raise InvalidManifest(f"{where} must be an object")
    digest, size, media_type = item.get("digest"), item.get("size"), item.get("mediaType", "")
    if not isinstance(digest, str):
        raise InvalidManifest(f"{where}.digest is missing")
    try:
        split_digest(digest)
    except InvalidDigest as exc:
        raise InvalidManifest(f"{where}: {exc}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"{where}.size must be a non-negative integer, got {size!r}")
    if not isinstance(media_type, str):
        raise InvalidManifest(f"{where}.mediaType must be a string")
    platform = None
    raw_platform = item.get("platform")
    if isinstance(raw_platform, dict):
        os_name, arch = raw_platform.get("os"), raw_platform.get("architecture")
        if isinstance(os_name, str) and isinstance(arch, str):
            variant = raw_platform.get("variant")
            platform = Platform(os_name, arch, variant if isinstance(variant, str) else "")
    urls = item.get("urls")
    urls_tuple = tuple(u for u in urls if isinstance(u, str)) if isinstance(urls, list) else ()
    return Descriptor(media_type, digest, size, platform, urls_tuple)


def content_type_base(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_manifest(body: bytes, content_type: str | None, where: str) -> ManifestDoc:
    """Parse a manifest or index body; `where` names it in errors (e.g. the reference)."""
    header_type = content_type_base(content_type)
    if header_type in _SCHEMA1:
        raise InvalidManifest(
            f"{where}: Docker schema 1 manifests are not supported; push the image again "
            "with a current client (schema 2 or OCI)"
        )
    doc = json_object(body, f"{where}: manifest", InvalidManifest)
    if doc.get("schemaVersion") == 1:
        raise InvalidManifest(
            f"{where}: Docker schema 1 manifests are not supported; push the image again "
            "with a current client (schema 2 or OCI)"
        )
    media_type = doc.get("mediaType") or header_type
    if media_type not in INDEX_TYPES | MANIFEST_TYPES:
        # OCI allows mediaType to be absent from the body; the shape tells then.
        if "manifests" in doc:
            media_type = MEDIA_OCI_INDEX
        elif "config" in doc and "layers" in doc:
            media_type = MEDIA_OCI_MANIFEST
        else:
            raise InvalidManifest(
                f"{where}: unsupported manifest media type {media_type!r} "
                f"(supported: {MANIFEST_ACCEPT})"
            )
    if media_type in INDEX_TYPES:
        items = doc.get("manifests")
        if not isinstance(items, list):
            raise InvalidManifest(f"{where}: index has no 'manifests' list")
        return ManifestDoc(
            media_type,
            manifests=tuple(
                _descriptor(m, f"{where}: manifests[{n}]") for n, m in enumerate(items)
            ),
        )
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidManifest(f"{where}: manifest has no 'layers' list")
    return ManifestDoc(
        media_type,
        config=_descriptor(doc.get("config"), f"{where}: config"),
        layers=tuple(_descriptor(m, f"{where}: layers[{n}]") for n, m in enumerate(layers)),
    )


def select_platforms(
    index: ManifestDoc, platforms: Sequence[Platform], where: str
) -> list[tuple[Platform, Descriptor]]:
    """The index entry for each platform asked for, in the order asked; InvalidManifest
    listing what the index has when one is missing (the caller reports it as not found)."""
    chosen: list[tuple[Platform, Descriptor]] = []
    for wanted in platforms:
        target = wanted.normalized()
        match = next(
            (d for d in index.manifests
             if d.platform is not None and d.platform.normalized() == target
             and d.media_type not in INDEX_TYPES),
            None,
        )
        if match is None:
            available = sorted({str(d.platform.normalized()) for d in index.manifests
                                if d.platform is not None})
            raise InvalidManifest(
                f"{where}: no manifest for platform {target} in the image index "
                f"(it has: {', '.join(available) or 'no platform entries'})"
            )
        if all(match.digest != d.digest for _, d in chosen):
            chosen.append((target, match))
    return chosen


def is_foreign(descriptor: Descriptor) -> bool:
    """Non-distributable layers (Windows base layers) live at `urls`, not in the registry."""
    return bool(descriptor.urls) or "foreign" in descriptor.media_type or (
        "nondistributable" in descriptor.media_type
    )


def config_platform(body: bytes) -> Platform | None:
    """The platform an image config declares (`os`, `architecture`, `variant`), if any."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    os_name, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
    if not (isinstance(os_name, str) and isinstance(arch, str) and os_name and arch):
        return None
    return Platform(os_name, arch, variant if isinstance(variant, str) else "").normalized()
