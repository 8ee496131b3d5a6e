"""The OCI image layout the builder writes under `/oci` on the cache disk (DESIGN.md).

Pure: file bodies and relative paths. Digests are checked here, before anything joins
them into a path, so a hostile manifest cannot name a file outside `blobs/`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from webhook.core.cachedisk import REF_NAME_ANNOTATION

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"

_DIGEST_HEX = {"sha256": re.compile(r"^[a-f0-9]{64}$"), "sha512": re.compile(r"^[a-f0-9]{128}$")}


class InvalidDigest(ValueError):
    pass


def split_digest(digest: str) -> tuple[str, str]:
    """`sha256:<hex>` -> ('sha256', hex); only the algorithms hashlib has and OCI registers."""
    algorithm, sep, encoded = digest.partition(":")
    pattern = _DIGEST_HEX.get(algorithm)
    if not sep or pattern is None:
        raise InvalidDigest(f"digest {digest!r}: algorithm must be sha256 or sha512")
    if not pattern.match(encoded):
        raise InvalidDigest(f"digest {digest!r}: not the lowercase hex length {algorithm} has")
    return algorithm, encoded


def blob_relpath(digest: str) -> str:
    """Where a blob lives, relative to the layout root: `blobs/sha256/<hex>`."""
    algorithm, encoded = split_digest(digest)
    return f"{BLOBS_DIR}/{algorithm}/{encoded}"


def layout_file_body() -> bytes:
    return b'{"imageLayoutVersion":"1.0.0"}\n'


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One image in index.json: the manifest or index a reference resolved to."""

    ref_name: str  # the normalized reference
    media_type: str
    digest: str
    size: int


def index_file_body(entries: Sequence[IndexEntry]) -> bytes:
    """index.json with one descriptor per reference, in the order given.

    Two references to one digest (a tag and a digest reference, say) get two entries: the
    ref.name annotation is how readers look an image up, so each spelling needs its own.
    """
    seen: set[str] = set()
    manifests = []
    for entry in entries:
        split_digest(entry.digest)
        if entry.ref_name in seen:
            continue
        seen.add(entry.ref_name)
        manifests.append(
            {
                "mediaType": entry.media_type,
                "digest": entry.digest,
                "size": entry.size,
                "annotations": {REF_NAME_ANNOTATION: entry.ref_name},
            }
        )
    body = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": manifests}
    return (json.dumps(body, indent=2) + "\n").encode()
