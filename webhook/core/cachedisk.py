"""The cache disk's description file, `/imagecache.json` (DESIGN.md, "The cache disk").

The builder writes it last, after every blob and `oci/index.json` are complete, so a disk
that has it is whole; the node mirror recognizes a cache disk by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from webhook.core.jsondoc import json_object

SCHEMA_VERSION = 1
MANIFEST_FILE = "imagecache.json"
OCI_DIR = "oci"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


class InvalidCacheManifest(ValueError):
    """imagecache.json is missing a field or has one of the wrong type."""


@dataclass(frozen=True, slots=True)
class CachedLayer:
    """One layer of one platform of an image, and whether `/layers/<chainID hex>/` holds it."""

    digest: str  # the compressed blob in oci/
    diff_id: str
    chain_id: str
    size: int  # the blob's bytes
    unpacked: bool  # /layers/<chainID hex>/ was written and verified
    platform: str = ""  # os/arch[/variant] of the manifest it belongs to

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "diffID": self.diff_id, "chainID": self.chain_id,
                "size": self.size, "unpacked": self.unpacked, "platform": self.platform}


@dataclass(frozen=True, slots=True)
class CachedImage:
    image: str  # normalized reference, as in index.json's ref.name annotation
    digest: str  # digest of the manifest or index the reference resolved to
    size: int  # bytes: the manifest(s), configs and layers stored for this image
    media_type: str = ""
    layers: tuple[CachedLayer, ...] = ()  # every platform's, base layer first


@dataclass(frozen=True, slots=True)
class CacheManifest:
    name: str
    images: tuple[CachedImage, ...]
    platforms: tuple[str, ...] = ("linux/amd64",)
    # Content pulled with a pull secret is private: the node mirror serves it to every pod
    # on the node, so it does so only when the cache says that is wanted.
    built_with_credentials: bool = False
    serve_credentialed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mirror_may_serve(self) -> bool:
        return not self.built_with_credentials or self.serve_credentialed

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "schemaVersion": SCHEMA_VERSION,
            "name": self.name,
            "images": [
                {"image": i.image, "digest": i.digest, "size": i.size, "mediaType": i.media_type,
                 **({"layers": [layer.to_json() for layer in i.layers]} if i.layers else {})}
                for i in self.images
            ],
            "platforms": list(self.platforms),
            "builtWithCredentials": self.built_with_credentials,
            "serveCredentialed": self.serve_credentialed,
            **self.extra,
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


def _field(body: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidCacheManifest(
            f"{MANIFEST_FILE}: field {where}{key!r} must be a {kind.__name__}, got {value!r}"
        )
    return value


def _layers(items: Any, where: str) -> tuple[CachedLayer, ...]:
    if not isinstance(items, list):
        raise InvalidCacheManifest(f"{MANIFEST_FILE}: field {where}'layers' must be a list")
    layers = []
    for n, item in enumerate(items):
        at = f"{where}layers[{n}]."
        if not isinstance(item, dict):
            raise InvalidCacheManifest(f"{MANIFEST_FILE}: {at[:-1]} must be an object")
        layers.append(CachedLayer(
            digest=_field(item, "digest", str, at), diff_id=_field(item, "diffID", str, at),
            chain_id=_field(item, "chainID", str, at), size=_field(item, "size", int, at),
            unpacked=_field(item, "unpacked", bool, at), platform=str(item.get("platform", "")),
        ))
    return tuple(layers)


def parse_manifest(text: str | bytes) -> CacheManifest:
    """Parse imagecache.json; raise InvalidCacheManifest naming the bad field."""
    body = json_object(text, MANIFEST_FILE, InvalidCacheManifest)
    version = _field(body, "schemaVersion", int)
    if version != SCHEMA_VERSION:
        raise InvalidCacheManifest(
            f"{MANIFEST_FILE}: schemaVersion {version} is not supported (want {SCHEMA_VERSION})"
        )
    images = []
    for n, item in enumerate(_field(body, "images", list)):
        if not isinstance(item, dict):
            raise InvalidCacheManifest(f"{MANIFEST_FILE}: images[{n}] must be an object")
        where = f"images[{n}]."
        images.append(
            CachedImage(
                image=_field(item, "image", str, where),
                digest=_field(item, "digest", str, where),
                size=_field(item, "size", int, where),
                media_type=str(item.get("mediaType", "")),
                layers=_layers(item.get("layers", []), where),
            )
        )
    platforms = _field(body, "platforms", list)
    known = {
        "schemaVersion",
        "name",
        "images",
        "platforms",
        "builtWithCredentials",
        "serveCredentialed",
    }
    return CacheManifest(
        name=_field(body, "name", str),
        images=tuple(images),
        platforms=tuple(str(p) for p in platforms),
        built_with_credentials=bool(body.get("builtWithCredentials", False)),
        serve_credentialed=bool(body.get("serveCredentialed", False)),
        extra={k: v for k, v in body.items() if k not in known},
    )
