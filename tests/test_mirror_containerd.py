"""containerd pulls through the node mirror, as kubelet makes it pull: CRI PullImage over gRPC.

Real parts only: Debian's containerd (own root, state, socket, registry config_path), Debian's
docker-registry as the upstream, `imagecache mirror serve` and `imagecache mirror configure`
as processes and functions of this package. A cached image must come from the mirror alone
(the upstream's log shows no request for it) with the upstream's digests; an image no disk
holds falls back to the upstream and still pulls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mirror_testkit import (
    Containerd,
    CriImages,
    MirrorProcess,
    containerd_unavailable,
    kubelet_mount,
    make_cache_disk,
)
from registry_fixture import (
    Registry,
    fetch,
    image,
    index,
    layer,
    layer_of,
    manifest_of,
    missing_tools,
)

from webhook.mirror.command import main as mirror_main

_MISSING = missing_tools("docker-registry", "skopeo") or containerd_unavailable()
pytestmark = [
    pytest.mark.containerd,
    pytest.mark.registry,
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]


@dataclass
class Node:
    upstream: Registry
    mirror: MirrorProcess
    cri: CriImages
    containerd: Containerd
    certs_d: Path
    root: Path
    work: Path
    cached_index: str  # digest of the index the disk holds for library/cached:1


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    work = tmp_path_factory.mktemp("mirror-node")
    with Registry(work / "upstream") as up:
        pusher = up.client()
        pusher.push_index("library/cached", "1", index([
            image([layer_of({"etc/amd": b"amd64"}), layer(7, 200_000),
                   layer_of({"opt/more.txt": b"third layer"})], "amd64"),
            image([layer_of({"etc/arm": b"arm64"})], "arm64"),
        ]))
        pusher.push_image("library/tagged", "1", image([layer_of({"etc/tagged": b"on disk"})]))
        pusher.push_image("library/uncached", "1",
                          image([layer_of({"etc/uncached": b"only upstream"})]))

        root = work / "pods"
        make_cache_disk(kubelet_mount(root, "pod-a", "pvc-a"), "cached", [
            (f"{up.host}/library/cached:1", f"{up.host}/library/cached:1"),
            (f"{up.host}/library/tagged:1", f"{up.host}/library/tagged:1"),
        ])
        cached_index = manifest_of(up.url, "library/cached", "1")[0]
        # Both tags move upstream after the cache was built: what a tag means is the
        # registry's answer now, not the disk's.
        pusher.push_image("library/cached", "1", image([layer_of({"etc/new": b"moved on"})]))
        pusher.push_image("library/tagged", "1", image([layer_of({"etc/new": b"tag moved"})]))
        mirror = MirrorProcess(root, work / "mirror.log")
        certs_d = work / "certs.d"
        # An existing hosts.toml with a key of its own: configure must keep it.
        (certs_d / up.host).mkdir(parents=True)
        (certs_d / up.host / "hosts.toml").write_text('server = "http://example.invalid"\n'
                                                       'skip_verify = true\n')
        assert mirror_main(["configure", "--config-path", str(certs_d), "--registry", up.host,
                            "--mirror", mirror.url, "--plain-http", up.host]) == 0
        ctd = Containerd(work / "containerd", certs_d)
        cri = CriImages(ctd.socket, work)
        try:
            yield Node(up, mirror, cri, ctd, certs_d, root, work, cached_index)
        finally:
            cri.close()
            ctd.stop()
            mirror.stop()


def test_hosts_toml_puts_the_mirror_first_and_keeps_the_rest(node: Node) -> None:
    text = (node.certs_d / node.upstream.host / "hosts.toml").read_text()
    assert text == (
        f'server = "http://{node.upstream.host}"\n'
        "skip_verify = true\n"
        "\n"
        f'[host."{node.mirror.url}"]\n'
        '  capabilities = ["pull"]\n'
    )


def _config_of(up: Registry, repository: str, reference: str) -> str:
    return str(json.loads(manifest_of(up.url, repository, reference)[2])["config"]["digest"])


def test_a_pull_by_tag_is_resolved_by_the_registry_even_when_a_disk_holds_the_tag(
    node: Node,
) -> None:
    """Issue 10.5: a pod that never opted in asks for cached:1 and gets what the registry
    says cached:1 is now, not the digest another pod's cache disk holds."""
    up = node.upstream
    image = f"{up.host}/library/cached:1"
    now_digest, _, _ = manifest_of(up.url, "library/cached", "1")
    assert now_digest != node.cached_index
    config = _config_of(up, "library/cached", now_digest)
    before, mirror_before = len(up.requests()), len(node.mirror.lines())

    image_id = node.cri.pull(image)

    asked = up.requests()[before:]
    assert image_id == config
    assert f"{up.host}/library/cached@{now_digest}" in list(node.cri.status(image).repo_digests)
    assert any(re.fullmatch(r"(HEAD|GET) /v2/library/cached/manifests/1", r) for r in asked), asked
    # containerd does not even ask the mirror for the tag; were it asked, it would say 404.
    by_tag = [line for line in node.mirror.lines()[mirror_before:] if "/manifests/1?" in line]
    assert all("-> 404 miss (MANIFEST_UNKNOWN" in line for line in by_tag), by_tag


def test_a_pull_by_tag_and_digest_comes_from_the_mirror_alone(node: Node) -> None:
    """What a pinned pod asks for (`name:tag@digest`, see DESIGN "Pinning")."""
    up = node.upstream
    image = f"{up.host}/library/cached:1@{node.cached_index}"
    index_body = json.loads(
        manifest_of(up.url, "library/cached", node.cached_index)[2])
    amd64 = next(m for m in index_body["manifests"]
                 if m["platform"]["architecture"] == "amd64")
    config_digest = _config_of(up, "library/cached", amd64["digest"])
    before = len(up.requests())
    assert any("/v2/library/cached/manifests/" in r for r in up.requests())  # the log is read

    image_id = node.cri.pull(image)

    assert image_id == config_digest
    status = node.cri.status(image)
    assert f"{up.host}/library/cached@{node.cached_index}" in list(status.repo_digests)
    assert up.requests()[before:] == []  # no manifest, no blob from the registry
    hits = [line for line in node.mirror.lines() if "/library/cached/" in line and " hit" in line]
    assert any(f"manifests/{node.cached_index}?ns={up.host} -> 200 hit" in h for h in hits)
    assert any(f"manifests/{amd64['digest']}?ns={up.host} -> 200" in h for h in hits)
    assert sum("/blobs/" in h and "-> 200 hit" in h for h in hits) == 4  # config + 3 layers

    status_code, _, text = fetch(f"{node.mirror.url}/metrics")
    assert status_code == 200
    served = re.search(
        rf'imagecache_mirror_hits_total{{kind="blob",registry="{re.escape(up.host)}"}}'
        r" (\d+\.\d+)", text.decode())
    assert served is not None and float(served.group(1)) >= 4


def test_with_serve_tags_the_tag_comes_from_the_disk(node: Node) -> None:
    """`mirror serve --serve-tags` and `configure --serve-tags`: for node pools where every
    pod opts in, a tag is answered from the disk (even though it has moved upstream)."""
    up = node.upstream
    hosts = node.certs_d / up.host / "hosts.toml"
    kept = hosts.read_text()
    mirror = MirrorProcess(node.root, node.work / "mirror-tags.log", "--serve-tags")
    try:
        assert mirror_main(["configure", "--config-path", str(node.certs_d), "--registry",
                            up.host, "--mirror", mirror.url, "--plain-http", up.host,
                            "--serve-tags"]) == 0
        assert f'[host."{mirror.url}"]\n  capabilities = ["pull", "resolve"]' in hosts.read_text()
        image = f"{up.host}/library/tagged:1"
        before = len(up.requests())

        image_id = node.cri.pull(image)

        assert up.requests()[before:] == []  # neither the tag nor a blob
        hit = next(line for line in mirror.lines() if "/library/tagged/manifests/1?" in line)
        assert "-> 200 hit sha256:" in hit
        disk_digest = hit.split(" hit ")[1].split()[0]
        assert disk_digest != manifest_of(up.url, "library/tagged", "1")[0]
        assert image_id == _config_of(up, "library/tagged", disk_digest)
    finally:
        hosts.write_text(kept)
        mirror.stop()


def test_an_image_no_disk_holds_falls_back_to_the_registry(node: Node) -> None:
    up = node.upstream
    image = f"{up.host}/library/uncached:1"
    digest, _, body = manifest_of(up.url, "library/uncached", "1")
    before = len(up.requests())

    image_id = node.cri.pull(image)

    assert image_id == json.loads(body)["config"]["digest"]
    assert f"{up.host}/library/uncached@{digest}" in list(node.cri.status(image).repo_digests)
    asked = up.requests()[before:]
    assert any(re.match(r"(HEAD|GET) /v2/library/uncached/manifests/1", r) for r in asked)
    assert any("/v2/library/uncached/blobs/" in r for r in asked)
    misses = [line for line in node.mirror.lines() if "/library/uncached/" in line]
    assert misses  # asked for the blobs first
    assert all("-> 404 miss (" in line for line in misses)
