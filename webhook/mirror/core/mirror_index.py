"""What a cache disk's OCI layout holds, indexed for the node mirror.

Pure: the shell (webhook.mirror.disks) hands in `oci/index.json` and a function that reads a
blob by digest; this module walks from the tagged entries of index.json through image
indexes to image manifests and records, per (registry, repository):

- the tags and the manifests (top level and children of an index) by digest, with their
  media type and bytes exactly as stored, so `Docker-Content-Digest` is the stored digest;
- the blobs those manifests reference (configs and layers): the only blobs the mirror may
  serve under that repository name.

`NodeIndex` merges the disks of a node; a lookup never crosses from one repository to another.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.core.cachedisk import OCI_DIR, REF_NAME_ANNOTATION
from webhook.core.imageref import InvalidReference, parse

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# distribution refuses manifests over 4 MiB; a bigger "manifest" on a disk is not one.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_MAX_NESTING = 4

# Only these two algorithms: anything else is refused before a path is ever built from it.
_DIGEST = re.compile(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")

ReadBlob = Callable[[str], bytes | None]
"""Reads `oci/blobs/<alg>/<hex>` of one disk; None when it is absent or too large."""


class InvalidLayout(ValueError):
    """oci/index.json cannot be used at all; the message says what is wrong."""


def is_digest(text: str) -> bool:
    """True for `sha256:<64 hex>` and `sha512:<128 hex>`, lowercase, nothing else."""
    return _DIGEST.fullmatch(text) is not None


def blob_path(digest: str) -> str:
    """Path of a blob relative to the disk root; ValueError for anything but a valid digest."""
    if not is_digest(digest):
        raise ValueError(f"not a sha256/sha512 digest: {digest!r}")
    algorithm, _, hexpart = digest.partition(":")
    return f"{OCI_DIR}/blobs/{algorithm}/{hexpart}"


def content_digest(algorithm: str, body: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class RepoContent:
    tags: Mapping[str, str]  # tag -> manifest digest
    manifests: Mapping[str, StoredManifest]  # digest -> manifest (top level and children)
    blobs: frozenset[str]  # configs and layers reachable from those manifests


@dataclass(frozen=True, slots=True)
class DiskIndex:
    repos: Mapping[tuple[str, str], RepoContent]
    problems: tuple[str, ...] = ()  # entries skipped, each saying why


@dataclass
class _Repo:
    tags: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, StoredManifest] = field(default_factory=dict)
    blobs: set[str] = field(default_factory=set)


def _media_type(descriptor_type: Any, doc: Mapping[str, Any]) -> str:
    """The descriptor's media type, else the document's own, else what its shape says."""
    for candidate in (descriptor_type, doc.get("mediaType")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return OCI_INDEX if "manifests" in doc and "config" not in doc else OCI_MANIFEST


def _descriptors(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = doc.get(key)
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        return []
    return [d for d in value if isinstance(d, Mapping)]


class _Walker:
    def __init__(self, read_blob: ReadBlob) -> None:
        self._read = read_blob
        self.problems: list[str] = []

    def walk(self, repo: _Repo, digest: str, descriptor_type: Any, where: str, depth: int) -> bool:
        """Record the manifest `digest` and all it references into `repo`; False if unusable."""
        if digest in repo.manifests:
            return True
        if depth > _MAX_NESTING:
            self.problems.append(f"{where}: indexes nested deeper than {_MAX_NESTING}: skipped")
            return False
        body = self._read(digest)
        if body is None:
            if depth == 0:
                self.problems.append(f"{where}: manifest {digest} is not in oci/blobs: skipped")
            # A child missing from an index is normal: the builder keeps only its platforms.
            return False
        algorithm = digest.partition(":")[0]
        if content_digest(algorithm, body) != digest:
            self.problems.append(f"{where}: blob {digest} does not match its digest: skipped")
            return False
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            self.problems.append(f"{where}: manifest {digest} is not a JSON object: skipped")
            return False
        media_type = _media_type(descriptor_type, doc)
        repo.manifests[digest] = StoredManifest(digest=digest, media_type=media_type, body=body)
        if media_type in INDEX_TYPES:
            for n, child in enumerate(_descriptors(doc, "manifests")):
                child_digest = child.get("digest")
                if isinstance(child_digest, str) and is_digest(child_digest):
                    self.walk(repo, child_digest, child.get("mediaType"),
                              f"{where} manifests[{n}]", depth + 1)
        else:
            for desc in (*_descriptors(doc, "config"), *_descriptors(doc, "layers")):
                blob = desc.get("digest")
                if isinstance(blob, str) and is_digest(blob):
                    repo.blobs.add(blob)
        return True


def build_disk_index(index_json: bytes | str, read_blob: ReadBlob) -> DiskIndex:
    """Index one disk's OCI layout; raise InvalidLayout if index.json is unusable."""
    try:
        top = json.loads(index_json)
    except ValueError as exc:
        raise InvalidLayout(f"{OCI_DIR}/index.json is not JSON: {exc}") from None
    if not isinstance(top, dict) or not isinstance(top.get("manifests"), list):
        raise InvalidLayout(f"{OCI_DIR}/index.json must be an object with a 'manifests' list")
    walker = _Walker(read_blob)
    repos: dict[tuple[str, str], _Repo] = {}
    for n, desc in enumerate(top["manifests"]):
        where = f"{OCI_DIR}/index.json manifests[{n}]"
        if not isinstance(desc, dict):
            walker.problems.append(f"{where}: not an object: skipped")
            continue
        annotations = desc.get("annotations")
        name = annotations.get(REF_NAME_ANNOTATION) if isinstance(annotations, dict) else None
        if not isinstance(name, str):
            walker.problems.append(f"{where}: no {REF_NAME_ANNOTATION} annotation: skipped")
            continue
        try:
            ref = parse(name)
        except InvalidReference as exc:
            walker.problems.append(f"{where}: {exc}: skipped")
            continue
        digest = desc.get("digest")
        if not isinstance(digest, str) or not is_digest(digest):
            walker.problems.append(f"{where} ({name}): digest {digest!r} is invalid: skipped")
            continue
        where = f"{where} ({name})"
        repo = repos.setdefault((ref.registry, ref.repository), _Repo())
        if walker.walk(repo, digest, desc.get("mediaType"), where, 0) and ref.tag is not None:
            repo.tags[ref.tag] = digest
    return DiskIndex(
        repos={
            key: RepoContent(tags=dict(r.tags), manifests=dict(r.manifests),
                             blobs=frozenset(r.blobs))
            for key, r in repos.items()
            if r.manifests
        },
        problems=tuple(walker.problems),
    )


class NodeIndex:
    """The disks of a node, first disk first: where two disks hold one tag, the first wins."""

    def __init__(self, disks: Sequence[tuple[str, DiskIndex]] = ()) -> None:
        self._by_repo: dict[tuple[str, str], list[tuple[str, RepoContent]]] = {}
        for disk_id, index in disks:
            for key, content in index.repos.items():
                self._by_repo.setdefault(key, []).append((disk_id, content))
        self.registries = frozenset(registry for registry, _ in self._by_repo)
        self.disk_ids = tuple(disk_id for disk_id, _ in disks)

    def repositories(self) -> Iterable[tuple[str, str]]:
        return self._by_repo.keys()

    def holds_repository(self, registry: str, repository: str) -> bool:
        return (registry, repository) in self._by_repo

    def manifest(
        self, registry: str, repository: str, reference: str
    ) -> tuple[str, StoredManifest] | None:
        """(disk id, manifest) for a tag or digest of this repository, or None."""
        for disk_id, content in self._by_repo.get((registry, repository), ()):
            digest = reference if is_digest(reference) else content.tags.get(reference)
            if digest is not None and digest in content.manifests:
                return disk_id, content.manifests[digest]
        return None

    def tags(self, registry: str, repository: str) -> list[str]:
        """The tags of this repository on any disk (empty: the repository is not held)."""
        out: set[str] = set()
        for _, content in self._by_repo.get((registry, repository), ()):
            out.update(content.tags)
        return sorted(out)

    def blob_disks(self, registry: str, repository: str, digest: str) -> list[str]:
        """Disks on which `digest` is reachable from a manifest of this repository (a
        manifest is a blob too: registries serve it under /blobs/ as well)."""
        return [
            disk_id
            for disk_id, content in self._by_repo.get((registry, repository), ())
            if digest in content.blobs or digest in content.manifests
        ]
