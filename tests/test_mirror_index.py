"""webhook.mirror.core.mirror_index: what an OCI layout holds, per repository, and the
node's view."""

from __future__ import annotations

import json
from typing import Any

import pytest
from registry_fixture import sha256

from webhook.mirror.core.mirror_index import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    DiskIndex,
    InvalidLayout,
    NodeIndex,
    RepoContent,
    StoredManifest,
    blob_path,
    build_disk_index,
    is_digest,
)

REF = "org.opencontainers.image.ref.name"


class Blobs:
    """An in-memory blob store: the content-addressed half of a layout."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, body: bytes) -> str:
        digest = sha256(body)
        self.data[digest] = body
        return digest

    def doc(self, doc: dict[str, Any]) -> tuple[str, bytes]:
        body = json.dumps(doc).encode()
        return self.put(body), body

    def image(self, name: str, media_type: str | None = OCI_MANIFEST) -> tuple[str, list[str]]:
        config = self.put(f"config of {name}".encode())
        layers = [self.put(f"layer {n} of {name}".encode()) for n in range(2)]
        doc: dict[str, Any] = {"schemaVersion": 2, "config": {"digest": config},
                               "layers": [{"digest": d} for d in layers]}
        if media_type:
            doc["mediaType"] = media_type
        return self.doc(doc)[0], [config, *layers]

    def index(self, children: list[str], media_type: str = OCI_INDEX,
              child_type: str = OCI_MANIFEST) -> str:
        return self.doc({"schemaVersion": 2, "mediaType": media_type,
                         "manifests": [{"digest": c, "mediaType": child_type}
                                       for c in children]})[0]


def layout(*entries: tuple[str, str | None, str | None]) -> bytes:
    """index.json with (digest, media type, ref name) entries."""
    manifests = []
    for digest, media_type, name in entries:
        entry: dict[str, Any] = {"digest": digest, "size": 1}
        if media_type:
            entry["mediaType"] = media_type
        if name is not None:
            entry["annotations"] = {REF: name}
        manifests.append(entry)
    return json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()


def test_a_tagged_image_and_what_it_reaches() -> None:
    blobs = Blobs()
    digest, reached = blobs.image("nginx")
    got = build_disk_index(layout((digest, OCI_MANIFEST, "nginx:1.25")), blobs.data.get)
    assert got.problems == ()
    content = got.repos[("docker.io", "library/nginx")]
    assert content.tags == {"1.25": digest}
    assert content.manifests == {digest: StoredManifest(digest, OCI_MANIFEST, blobs.data[digest])}
    assert content.blobs == frozenset(reached)


def test_an_index_records_its_present_children_only() -> None:
    blobs = Blobs()
    amd, amd_blobs = blobs.image("amd")
    arm, arm_blobs = blobs.image("arm")
    top = blobs.index([amd, arm])
    del blobs.data[arm]  # the builder kept only linux/amd64: a normal, quiet absence
    for blob in arm_blobs:
        blobs.data.pop(blob)
    got = build_disk_index(layout((top, OCI_INDEX, "ghcr.io/x/app:2")), blobs.data.get)
    assert got.problems == ()
    content = got.repos[("ghcr.io", "x/app")]
    assert content.tags == {"2": top}
    assert set(content.manifests) == {top, amd}
    assert content.manifests[top].media_type == OCI_INDEX
    assert content.blobs == frozenset(amd_blobs)


@pytest.mark.parametrize(
    ("descriptor_type", "doc_type", "shape", "expected"),
    [
        (DOCKER_MANIFEST, OCI_MANIFEST, "image", DOCKER_MANIFEST),  # the descriptor wins
        (None, DOCKER_MANIFEST, "image", DOCKER_MANIFEST),
        (None, None, "image", OCI_MANIFEST),
        (None, DOCKER_LIST, "index", DOCKER_LIST),
        (None, None, "index", OCI_INDEX),
    ],
)
def test_media_type_as_stored(descriptor_type: str | None, doc_type: str | None, shape: str,
                              expected: str) -> None:
    blobs = Blobs()
    if shape == "image":
        digest, _ = blobs.image("x", doc_type)
    else:
        child, _ = blobs.image("child")
        doc: dict[str, Any] = {"schemaVersion": 2, "manifests": [{"digest": child}]}
        if doc_type:
            doc["mediaType"] = doc_type
        digest = blobs.doc(doc)[0]
    got = build_disk_index(layout((digest, descriptor_type, "x:1")), blobs.data.get)
    assert got.repos[("docker.io", "library/x")].manifests[digest].media_type == expected


def test_a_digest_reference_is_held_without_a_tag() -> None:
    blobs = Blobs()
    digest, _ = blobs.image("x")
    got = build_disk_index(layout((digest, OCI_MANIFEST, f"quay.io/a/x@{digest}")),
                           blobs.data.get)
    content = got.repos[("quay.io", "a/x")]
    assert content.tags == {}
    assert digest in content.manifests


def test_two_tags_of_one_repository_and_one_image_under_two_names() -> None:
    blobs = Blobs()
    one, one_blobs = blobs.image("one")
    two, two_blobs = blobs.image("two")
    got = build_disk_index(layout(
        (one, OCI_MANIFEST, "docker.io/library/x:1"),
        (two, OCI_MANIFEST, "x:2"),
        (one, OCI_MANIFEST, "127.0.0.1:5000/library/x:1"),
    ), blobs.data.get)
    assert got.repos[("docker.io", "library/x")].tags == {"1": one, "2": two}
    assert got.repos[("docker.io", "library/x")].blobs == frozenset(one_blobs + two_blobs)
    assert got.repos[("127.0.0.1:5000", "library/x")].blobs == frozenset(one_blobs)


SKIPPED = [
    # (what is wrong, index.json entries builder, fragment of the problem)
    ("no annotation", lambda d: layout((d, OCI_MANIFEST, None)), "no org.opencontainers"),
    ("bad reference", lambda d: layout((d, OCI_MANIFEST, "UPPER/Case:1")), "must be lowercase"),
    ("bad digest", lambda d: layout(("sha256:zz", OCI_MANIFEST, "x:1")), "is invalid"),
    ("missing manifest", lambda d: layout(("sha256:" + "0" * 64, OCI_MANIFEST, "x:1")),
     "is not in oci/blobs"),
    ("entry not an object", lambda d: json.dumps({"manifests": ["x"]}).encode(),
     "not an object"),
]


@pytest.mark.parametrize(("why", "make", "problem"), SKIPPED, ids=[s[0] for s in SKIPPED])
def test_unusable_entries_are_skipped_saying_why(why: str, make: Any, problem: str) -> None:
    blobs = Blobs()
    digest, _ = blobs.image("x")
    got = build_disk_index(make(digest), blobs.data.get)
    assert got.repos == {}
    assert len(got.problems) == 1
    assert problem in got.problems[0]


def test_content_that_does_not_match_its_digest_is_not_served() -> None:
    blobs = Blobs()
    digest, _ = blobs.image("x")
    blobs.data[digest] = b'{"tampered": true}'
    got = build_disk_index(layout((digest, OCI_MANIFEST, "x:1")), blobs.data.get)
    assert got.repos == {}
    assert "does not match its digest" in got.problems[0]


def test_a_manifest_that_is_not_json_is_skipped() -> None:
    blobs = Blobs()
    digest = blobs.put(b"\x00not json")
    got = build_disk_index(layout((digest, OCI_MANIFEST, "x:1")), blobs.data.get)
    assert got.repos == {}
    assert "not a JSON object" in got.problems[0]


@pytest.mark.parametrize(("levels", "served"), [(1, True), (4, True), (6, False)])
def test_indexes_nested_too_deep_are_cut_off(levels: int, served: bool) -> None:
    blobs = Blobs()
    image, image_blobs = blobs.image("c")
    digest = blobs.index([image])
    for _ in range(levels - 1):
        digest = blobs.index([digest], child_type=OCI_INDEX)
    got = build_disk_index(layout((digest, OCI_INDEX, "x:1")), blobs.data.get)
    content = got.repos[("docker.io", "library/x")]
    assert (image in content.manifests) is served
    assert (content.blobs == frozenset(image_blobs)) is served
    assert any("nested deeper" in p for p in got.problems) is not served


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"{not json", "is not JSON"),
        (b"[]", "must be an object"),
        (b'{"manifests": {}}', "must be an object with a 'manifests' list"),
    ],
)
def test_an_unusable_index_json_fails_the_disk(text: bytes, message: str) -> None:
    with pytest.raises(InvalidLayout, match=message):
        build_disk_index(text, lambda digest: None)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("sha256:" + "a" * 64, True),
        ("sha512:" + "a" * 128, True),
        ("sha256:" + "A" * 64, False),
        ("sha256:" + "a" * 63, False),
        ("sha512:" + "a" * 64, False),
        ("sha384:" + "a" * 96, False),
        ("sha256:../../etc/passwd", False),
        ("sha256:" + "a" * 64 + "\n", False),
        ("", False),
    ],
)
def test_is_digest_and_blob_path(text: str, valid: bool) -> None:
    assert is_digest(text) is valid
    if valid:
        algorithm, _, hexpart = text.partition(":")
        assert blob_path(text) == f"oci/blobs/{algorithm}/{hexpart}"
    else:
        with pytest.raises(ValueError, match="not a sha256/sha512 digest"):
            blob_path(text)


def _content(tags: dict[str, str], manifests: list[str], blobs: list[str]) -> RepoContent:
    return RepoContent(tags=tags, manifests={d: StoredManifest(d, OCI_MANIFEST, b"{}")
                                             for d in manifests},
                       blobs=frozenset(blobs))


A, B, C, L1, L2 = ("sha256:" + c * 64 for c in "abcde")


def test_node_index_prefers_the_first_disk_and_scopes_blobs_by_repository() -> None:
    newer = DiskIndex({("docker.io", "library/x"): _content({"1": B}, [B], [L2])})
    older = DiskIndex({
        ("docker.io", "library/x"): _content({"1": A, "0": C}, [A, C], [L1]),
        ("ghcr.io", "library/x"): _content({"1": C}, [C], [L1]),
    })
    node = NodeIndex([("/disk/new", newer), ("/disk/old", older)])
    assert node.registries == {"docker.io", "ghcr.io"}
    assert node.manifest("docker.io", "library/x", "1") == ("/disk/new", newer.repos[
        ("docker.io", "library/x")].manifests[B])
    assert node.manifest("docker.io", "library/x", "0")[0] == "/disk/old"  # type: ignore[index]
    assert node.manifest("docker.io", "library/x", A)[0] == "/disk/old"  # type: ignore[index]
    assert node.manifest("docker.io", "library/x", "2") is None
    assert node.manifest("quay.io", "library/x", "1") is None
    assert node.manifest("docker.io", "library/y", "1") is None
    assert node.tags("docker.io", "library/x") == ["0", "1"]
    assert node.blob_disks("docker.io", "library/x", L1) == ["/disk/old"]
    assert node.blob_disks("docker.io", "library/x", L2) == ["/disk/new"]
    assert node.blob_disks("docker.io", "library/x", B) == ["/disk/new"]  # a manifest, as blob
    assert node.blob_disks("ghcr.io", "library/x", L2) == []  # held, but by another registry
    assert node.blob_disks("docker.io", "library/y", L1) == []
    assert node.holds_repository("ghcr.io", "library/x")
    assert not node.holds_repository("ghcr.io", "library/y")
    assert NodeIndex().manifest("docker.io", "library/x", "1") is None
