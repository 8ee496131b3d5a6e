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
        pusher.push_image("library/uncached", "1",
                          image([layer_of({"etc/uncached": b"only upstream"})]))

        root = work / "pods"
        make_cache_disk(kubelet_mount(root, "pod-a", "pvc-a"), "cached",
                        [(f"{up.host}/library/cached:1", f"{up.host}/library/cached:1")])
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
            yield Node(up, mirror, cri, ctd, certs_d)
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
        '  capabilities = ["pull", "resolve"]\n'
    )


def test_a_cached_image_comes_from_the_mirror_alone(node: Node) -> None:
    up = node.upstream
    image = f"{up.host}/library/cached:1"
    index_digest, _, index_body = manifest_of(up.url, "library/cached", "1")
    amd64 = next(m for m in json.loads(index_body)["manifests"]
                 if m["platform"]["architecture"] == "amd64")
    config_digest = json.loads(manifest_of(up.url, "library/cached", amd64["digest"])[2])[
        "config"]["digest"]
    before = len(up.requests())
    assert any("/v2/library/cached/manifests/" in r for r in up.requests())  # the log is read

    image_id = node.cri.pull(image)

    assert image_id == config_digest
    status = node.cri.status(image)
    assert f"{up.host}/library/cached@{index_digest}" in list(status.repo_digests)
    assert image in list(status.repo_tags)
    assert up.requests()[before:] == []
    hits = [line for line in node.mirror.lines() if "/library/cached/" in line and " hit" in line]
    assert any(f"manifests/1?ns={up.host} -> 200 hit {index_digest}" in h for h in hits)
    assert any(f"manifests/{amd64['digest']}?ns={up.host} -> 200" in h for h in hits)
    assert sum("/blobs/" in h and "-> 200 hit" in h for h in hits) == 4  # config + 3 layers

    status_code, _, text = fetch(f"{node.mirror.url}/metrics")
    assert status_code == 200
    served = re.search(
        rf'imagecache_mirror_hits_total{{kind="blob",registry="{re.escape(up.host)}"}}'
        r" (\d+\.\d+)", text.decode())
    assert served is not None and float(served.group(1)) >= 4


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
    misses = [line for line in node.mirror.lines() if "/library/uncached/manifests/1" in line]
    assert misses
    assert all("-> 404 miss (MANIFEST_UNKNOWN" in line for line in misses)
