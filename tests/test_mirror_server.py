"""The node mirror against real clients: skopeo and plain HTTP, with Debian's docker-registry
as the upstream the cache disks were copied from (by skopeo, as the builder does)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from mirror_testkit import Layout, kubelet_mount, make_cache_disk, mirror_in_process
from registry_fixture import (
    ACCEPT_ALL,
    OCI_LAYER_GZIP,
    Blob,
    Image,
    Registry,
    fetch,
    image,
    index,
    layer,
    layer_of,
    manifest_of,
    needs,
    sha256,
    skopeo,
)

from webhook.core.cachedisk import CacheManifest, parse_manifest

pytestmark = [pytest.mark.registry, needs("docker-registry", "skopeo")]

BIG_LAYER = 300_000


@dataclass
class World:
    upstream: Registry
    root: Path  # the kubelet pods directory the mirror watches
    disks: dict[str, Path]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("mirror-world")
    with Registry(work / "upstream") as up:
        pusher = up.client()
        pusher.push_image("library/alpha", "1", image([layer_of({"alpha/a.txt": b"alpha one"}),
                                                       layer(1, BIG_LAYER)]))
        pusher.push_index("library/multi", "1", index([
            image([layer_of({"m/amd": b"amd64 bits"})], "amd64"),
            image([layer_of({"m/arm": b"arm64 bits"})], "arm64"),
        ]))
        for repository, files in [("library/beta", {"beta": b"beta"}),
                                  ("hubteam/app", {"team": b"from docker hub"}),
                                  ("ghcrteam/app", {"team": b"from ghcr"}),
                                  ("library/secret", {"secret": b"private bits"})]:
            pusher.push_image(repository, "1", image([layer_of(files)]))

        root = work / "pods"
        disks = {
            "web": kubelet_mount(root, "pod-a", "pvc-web"),
            "ghcr": kubelet_mount(root, "pod-b", "pvc-ghcr"),
            "private": kubelet_mount(root, "pod-c", "pvc-private"),
        }
        u = up.host
        make_cache_disk(disks["web"], "web", [
            (f"{u}/library/alpha:1", f"{u}/library/alpha:1"),
            (f"{u}/library/alpha:1", "docker.io/library/alpha:1"),
            (f"{u}/library/multi:1", f"{u}/library/multi:1"),
            (f"{u}/hubteam/app:1", "docker.io/team/app:1"),
        ])
        make_cache_disk(disks["ghcr"], "ghcr", [(f"{u}/ghcrteam/app:1", "ghcr.io/team/app:1")])
        make_cache_disk(disks["private"], "private",
                        [(f"{u}/library/secret:1", f"{u}/library/secret:1")],
                        built_with_credentials=True)
        yield World(up, root, disks)


def blobs_of(manifest: bytes) -> list[str]:
    doc = json.loads(manifest)
    return [doc["config"]["digest"], *[layer["digest"] for layer in doc["layers"]]]


async def get(session: aiohttp.ClientSession, url: str, method: str = "GET",
              **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with session.request(method, url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


# ---------------------------------------------------------------- skopeo, a real client


async def test_skopeo_pulls_through_the_mirror_with_the_upstream_digests(
    world: World, tmp_path: Path
) -> None:
    up = world.upstream
    async with mirror_in_process(world.root) as mirror:
        # No ns (skopeo sends none): the mirror answers for docker.io, its default.
        out = await asyncio.to_thread(
            skopeo, "inspect", "--tls-verify=false", f"docker://{mirror.host}/library/alpha:1")
        upstream_digest = manifest_of(up.url, "library/alpha", "1")[0]
        assert json.loads(out)["Digest"] == upstream_digest
        # A full copy makes skopeo fetch and verify every blob.
        await asyncio.to_thread(
            skopeo, "copy", "--quiet", "--src-tls-verify=false",
            f"docker://{mirror.host}/library/alpha:1", f"dir:{tmp_path / 'alpha'}")
        copied = (tmp_path / "alpha" / "manifest.json").read_bytes()
        assert sha256(copied) == upstream_digest
        assert mirror.metrics.hits.labels("docker.io", "blob")._value.get() >= 3

    # With the upstream as the default registry, the multi-arch index and all its children.
    async with mirror_in_process(world.root, default_registry=up.host) as mirror:
        raw = await asyncio.to_thread(
            skopeo, "inspect", "--raw", "--tls-verify=false",
            f"docker://{mirror.host}/library/multi:1")
        assert sha256(raw.encode()) == manifest_of(up.url, "library/multi", "1")[0]
        await asyncio.to_thread(
            skopeo, "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false",
            f"docker://{mirror.host}/library/multi:1", f"oci:{tmp_path / 'multi'}:m")
        index = json.loads((tmp_path / "multi" / "index.json").read_text())
        assert index["manifests"][0]["digest"] == manifest_of(up.url, "library/multi", "1")[0]


async def test_skopeo_falls_short_for_what_no_disk_holds(world: World) -> None:
    async with mirror_in_process(world.root) as mirror:
        with pytest.raises(RuntimeError, match=r"manifest unknown|MANIFEST_UNKNOWN|not found"):
            await asyncio.to_thread(
                skopeo, "inspect", "--tls-verify=false", f"docker://{mirror.host}/library/beta:1")


# ---------------------------------------------------------------- the API, with ?ns=


async def test_manifests_and_blobs_are_the_upstream_bytes(world: World) -> None:
    up = world.upstream
    ns = f"?ns={up.host}"
    async with mirror_in_process(world.root, default_registry="") as mirror, \
            aiohttp.ClientSession() as session:
        for repo in ("library/alpha", "library/multi"):
            digest, media_type, body = manifest_of(up.url, repo, "1")
            for reference in ("1", digest):
                status, headers, got = await get(
                    session, f"{mirror.url}/v2/{repo}/manifests/{reference}{ns}",
                    Accept=ACCEPT_ALL)
                assert (status, got) == (200, body)
                assert headers["Docker-Content-Digest"] == digest
                assert headers["Content-Type"] == media_type
                status, headers, got = await get(
                    session, f"{mirror.url}/v2/{repo}/manifests/{reference}{ns}", "HEAD")
                assert (status, got) == (200, b"")
                assert headers["Content-Length"] == str(len(body))
                assert headers["Docker-Content-Digest"] == digest
        # The index's children by digest, then every blob of every image.
        index = json.loads(manifest_of(up.url, "library/multi", "1")[2])
        images = [("library/alpha", manifest_of(up.url, "library/alpha", "1")[2])]
        for child in index["manifests"]:
            _, _, child_body = manifest_of(up.url, "library/multi", child["digest"])
            status, headers, got = await get(
                session, f"{mirror.url}/v2/library/multi/manifests/{child['digest']}{ns}")
            assert (status, got) == (200, child_body)
            assert headers["Content-Type"] == child["mediaType"]
            images.append(("library/multi", child_body))
        for repo, manifest in images:
            for blob in blobs_of(manifest):
                expected = fetch(f"{up.url}/v2/{repo}/blobs/{blob}")[2]
                status, headers, got = await get(
                    session, f"{mirror.url}/v2/{repo}/blobs/{blob}{ns}")
                assert (status, sha256(got)) == (200, blob)
                assert got == expected
                assert headers["Docker-Content-Digest"] == blob
                status, headers, got = await get(
                    session, f"{mirror.url}/v2/{repo}/blobs/{blob}{ns}", "HEAD")
                assert (status, got, headers["Content-Length"]) == (200, b"", str(len(expected)))
        status, headers, got = await get(session, f"{mirror.url}/v2/")
        assert status == 200
        assert headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, None),
        ("bytes=-50", -50, None),
        ("bytes=5-99999999999", 5, None),  # past the end: up to the end (RFC 9110)
        ("bytes=0-0", 0, 0),
    ],
)
async def test_range_requests_send_those_bytes(
    world: World, range_header: str, first: int, last: int | None
) -> None:
    up = world.upstream
    big = blobs_of(manifest_of(up.url, "library/alpha", "1")[2])[2]
    _, _, whole = fetch(f"{up.url}/v2/library/alpha/blobs/{big}")
    size = len(whole)
    start = first if first >= 0 else size + first
    end = size - 1 if last is None else last
    async with mirror_in_process(world.root) as mirror, aiohttp.ClientSession() as session:
        status, headers, got = await get(
            session, f"{mirror.url}/v2/library/alpha/blobs/{big}", Range=range_header)
    assert status == 206
    assert got == whole[start : end + 1]
    assert headers["Content-Range"] == f"bytes {start}-{end}/{size}"
    assert headers["Content-Length"] == str(end - start + 1)


async def test_by_default_manifests_are_served_by_digest_only(world: World) -> None:
    """Issue 10.5: a tag is the registry's to resolve, or a pod that never opted in would get
    whatever digest another pod's cache holds for it."""
    up = world.upstream
    digest, _, body = manifest_of(up.url, "library/alpha", "1")
    base = "/v2/library/alpha"
    async with mirror_in_process(world.root, serve_tags=False) as mirror, \
            aiohttp.ClientSession() as session:
        for method in ("GET", "HEAD"):
            status, _, got = await get(session, f"{mirror.url}{base}/manifests/1?ns={up.host}",
                                       method, Accept=ACCEPT_ALL)
            assert status == 404
        status, _, got = await get(session, f"{mirror.url}{base}/manifests/1?ns={up.host}")
        error = json.loads(got)["errors"][0]
        assert error["code"] == "MANIFEST_UNKNOWN"
        assert "by digest only" in error["message"] and "--serve-tags" in error["message"]
        status, _, got = await get(session, f"{mirror.url}{base}/tags/list?ns={up.host}")
        assert status == 404 and json.loads(got)["errors"][0]["code"] == "NAME_UNKNOWN"
        status, headers, got = await get(
            session, f"{mirror.url}{base}/manifests/{digest}?ns={up.host}", Accept=ACCEPT_ALL)
        assert (status, headers["Docker-Content-Digest"], got) == (200, digest, body)
        assert mirror.metrics.misses.labels(up.host, "manifest")._value.get() == 3
    async with mirror_in_process(world.root, serve_tags=True) as mirror, \
            aiohttp.ClientSession() as session:
        status, headers, _ = await get(
            session, f"{mirror.url}{base}/manifests/1?ns={up.host}", Accept=ACCEPT_ALL)
        assert (status, headers["Docker-Content-Digest"]) == (200, digest)


async def test_ns_keeps_registries_and_repositories_apart(world: World) -> None:
    up = world.upstream
    hub = manifest_of(up.url, "hubteam/app", "1")
    ghcr = manifest_of(up.url, "ghcrteam/app", "1")
    assert hub[0] != ghcr[0]
    async with mirror_in_process(world.root) as mirror, aiohttp.ClientSession() as session:
        base = f"{mirror.url}/v2/team/app/manifests/1"
        status, headers, _ = await get(session, f"{base}?ns=docker.io")
        assert (status, headers["Docker-Content-Digest"]) == (200, hub[0])
        status, headers, _ = await get(session, f"{base}?ns=index.docker.io")
        assert (status, headers["Docker-Content-Digest"]) == (200, hub[0])
        status, headers, _ = await get(session, f"{base}?ns=ghcr.io")
        assert (status, headers["Docker-Content-Digest"]) == (200, ghcr[0])
        status, _, body = await get(session, f"{base}?ns=quay.io")
        assert status == 404
        assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"

        # A blob is served only under a repository whose manifests reach it.
        ghcr_layer = blobs_of(ghcr[2])[1]
        ok = await get(session, f"{mirror.url}/v2/team/app/blobs/{ghcr_layer}?ns=ghcr.io")
        assert ok[0] == 200
        for where in ("team/app?ns=docker.io", "library/alpha?ns=ghcr.io", "other/app?ns=ghcr.io"):
            repo, _, query = where.partition("?")
            status, _, body = await get(
                session, f"{mirror.url}/v2/{repo}/blobs/{ghcr_layer}?{query}")
            assert status == 404, where
            assert json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
        alpha_config = blobs_of(manifest_of(up.url, "library/alpha", "1")[2])[0]
        status, _, _ = await get(
            session, f"{mirror.url}/v2/library/multi/blobs/{alpha_config}?ns={up.host}")
        assert status == 404


async def test_a_cache_built_with_credentials_is_served_only_when_it_allows(
    world: World, tmp_path: Path
) -> None:
    up = world.upstream
    secret = manifest_of(up.url, "library/secret", "1")
    url = f"/v2/library/secret/manifests/1?ns={up.host}"
    blob_url = f"/v2/library/secret/blobs/{blobs_of(secret[2])[1]}?ns={up.host}"
    root = tmp_path / "pods"
    shutil.copytree(world.root, root, symlinks=True)
    async with mirror_in_process(root) as mirror, aiohttp.ClientSession() as session:
        assert mirror.watcher.counts() == {"served": 2, "refused": 1, "broken": 0}
        assert (await get(session, mirror.url + url))[0] == 404
        assert (await get(session, mirror.url + blob_url))[0] == 404
        # The cache's owner allows it: the next poll serves it.
        disk = kubelet_mount(root, "pod-c", "pvc-private")
        described = parse_manifest((disk / "imagecache.json").read_text())
        allowed = CacheManifest(described.name, described.images, described.platforms,
                                built_with_credentials=True, serve_credentialed=True)
        (disk / "imagecache.json").write_text(allowed.to_json())
        await wait_until(lambda: mirror.watcher.counts()["refused"] == 0, 3)
        status, headers, _ = await get(session, mirror.url + url)
        assert (status, headers["Docker-Content-Digest"]) == (200, secret[0])
        assert (await get(session, mirror.url + blob_url))[0] == 200


async def wait_until(check: Callable[[], bool], limit: float) -> float:
    """Seconds until check() held; fails after `limit` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > limit:
            raise AssertionError(f"not within {limit}s")
        await asyncio.sleep(0.02)
    return loop.time() - start


async def test_disks_are_picked_up_and_dropped_within_a_second(
    world: World, tmp_path: Path
) -> None:
    root = tmp_path / "pods"
    root.mkdir()
    url_path = "/v2/library/alpha/manifests/1"
    async with mirror_in_process(root, interval=1.0) as mirror, aiohttp.ClientSession() as session:
        assert (await get(session, mirror.url + url_path))[0] == 404
        # A disk appears whole, as a mount does: staged, then renamed into kubelet's place.
        staged = tmp_path / "staged"
        shutil.copytree(world.disks["web"], staged)
        target = kubelet_mount(root, "pod-new", "pvc-new")
        target.parent.mkdir(parents=True)
        os.rename(staged, target)
        took = await wait_until(lambda: mirror.watcher.counts()["served"] == 1, 3)
        assert took < 1.5
        assert (await get(session, mirror.url + url_path))[0] == 200
        shutil.rmtree(target)
        took = await wait_until(lambda: mirror.watcher.counts()["served"] == 0, 3)
        assert took < 1.5
        assert (await get(session, mirror.url + url_path))[0] == 404


def _can_mount() -> str | None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "bind mounts need root and mount(8)"
    return None


@pytest.mark.skipif(_can_mount() is not None, reason=_can_mount() or "")
async def test_a_mounted_disk_is_served_and_an_unmounted_one_is_not(
    world: World, tmp_path: Path
) -> None:
    root = tmp_path / "pods"
    target = kubelet_mount(root, "pod-m", "pvc-m")
    target.mkdir(parents=True)
    url_path = "/v2/library/alpha/manifests/1"
    async with mirror_in_process(root, interval=1.0) as mirror, aiohttp.ClientSession() as session:
        mounted = await asyncio.to_thread(
            subprocess.run, ["mount", "--bind", "-o", "ro", str(world.disks["web"]), str(target)],
            capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"mount --bind is not permitted here: {mounted.stderr.strip()}")
        try:
            took = await wait_until(lambda: mirror.watcher.counts()["served"] == 1, 3)
            assert took < 1.5
            assert (await get(session, mirror.url + url_path))[0] == 200
        finally:
            await asyncio.to_thread(subprocess.run, ["umount", str(target)], check=True)
        took = await wait_until(lambda: mirror.watcher.counts()["served"] == 0, 3)
        assert took < 1.5
        assert (await get(session, mirror.url + url_path))[0] == 404


async def test_metrics_count_requests_bytes_hits_and_misses(world: World) -> None:
    up = world.upstream
    body = manifest_of(up.url, "library/alpha", "1")[2]
    async with mirror_in_process(world.root) as mirror, aiohttp.ClientSession() as session:
        await get(session, f"{mirror.url}/v2/library/alpha/manifests/1?ns={up.host}")
        await get(session, f"{mirror.url}/v2/library/alpha/manifests/1?ns={up.host}", "HEAD")
        await get(session, f"{mirror.url}/v2/library/nothing/manifests/1?ns={up.host}")
        await get(session, f"{mirror.url}/v2/library/nothing/manifests/1?ns=quay.io")
        status, _, text = await get(session, f"{mirror.url}/metrics")
    assert status == 200
    metrics = text.decode()
    for line in (
        f'imagecache_mirror_hits_total{{kind="manifest",registry="{up.host}"}} 2.0',
        f'imagecache_mirror_misses_total{{kind="manifest",registry="{up.host}"}} 1.0',
        'imagecache_mirror_misses_total{kind="manifest",registry="other"} 1.0',
        'imagecache_mirror_requests_total{code="200",kind="manifest",method="GET"} 1.0',
        'imagecache_mirror_requests_total{code="200",kind="manifest",method="HEAD"} 1.0',
        'imagecache_mirror_requests_total{code="404",kind="manifest",method="GET"} 2.0',
        f'imagecache_mirror_served_bytes_total{{kind="manifest"}} {float(len(body))}',
    ):
        assert line in metrics, line


# ---------------------------------------------------------------- bad requests


async def raw_http(host: str, method: str, target: str, *headers: str
                   ) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (no client normalizes the path)."""
    address, _, port = host.rpartition(":")
    reader, writer = await asyncio.open_connection(address, int(port))
    head = "".join(f"{h}\r\n" for h in headers)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                 f"{head}\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    parsed = {}
    for line in header_block.decode().split("\r\n"):
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


SHA = "sha256:" + "ab" * 32
BAD_REQUESTS = [
    # (method, target, extra header, statuses allowed, OCI error code or None)
    ("GET", "/v2/../../etc/passwd/manifests/1", "", {400, 404}, None),
    ("GET", "/v2/library/..%2f..%2fimagecache.json/manifests/1", "", {400}, "NAME_INVALID"),
    ("GET", "/v2/library/alpha/blobs/sha256:..%2f..%2f..%2fimagecache.json", "", {400, 404},
     None),
    ("GET", "/v2/library/alpha/blobs/sha256:../../../imagecache.json", "", {400, 404}, None),
    ("GET", "/v2/library/alpha/blobs/" + SHA.upper(), "", {400}, "DIGEST_INVALID"),
    ("GET", "/v2/library/alpha/blobs/sha256:abc", "", {400}, "DIGEST_INVALID"),
    ("GET", "/v2/library/alpha/blobs/md5:" + "a" * 32, "", {400}, "DIGEST_INVALID"),
    ("GET", "/v2/library/alpha/blobs/" + SHA[:-1], "", {400}, "DIGEST_INVALID"),
    ("GET", "/v2/library/alpha/blobs/latest", "", {400}, "DIGEST_INVALID"),
    ("GET", "/v2/library/alpha/manifests/-bad", "", {400}, "NAME_INVALID"),
    ("GET", "/v2/library/alpha/manifests/" + "t" * 200, "", {400}, "NAME_INVALID"),
    ("GET", "/v2/Library/Alpha/manifests/1", "", {400}, "NAME_INVALID"),
    ("GET", "/v2/" + "a/" * 130 + "b/manifests/1", "", {400}, "NAME_INVALID"),
    ("GET", "/v2/library/al%00pha/manifests/1", "", {400}, "NAME_INVALID"),
    ("GET", "/v2/library/alpha/manifests/1?ns=library", "", {400}, "NAME_INVALID"),
    ("GET", "/v2/library/alpha/manifests/1?ns=a.io/b", "", {400}, "NAME_INVALID"),
    ("GET", "/v2/library/alpha/manifests/1?ns=", "", {400}, "NAME_INVALID"),
    ("GET", "/v2/library/alpha/manifests/1?ns=quay.io", "", {404}, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/alpha/tags/list?ns=quay.io", "", {404}, "NAME_UNKNOWN"),
    ("HEAD", "/v2/library/alpha/manifests/1?ns=quay.io", "", {404}, None),
    ("GET", "/v2/library/alpha/manifests/1", "Accept: application/vnd.docker.distribution"
     ".manifest.v1+json", {404}, "MANIFEST_UNKNOWN"),
    ("GET", "{layer}", "Range: bytes=99999999999999999999999-", {416}, "RANGE_INVALID"),
    ("GET", "{layer}", "Range: bytes=0-1,5-6", {416}, "RANGE_INVALID"),
    ("GET", "{layer}", "Range: bytes=10-5", {416}, "RANGE_INVALID"),
    ("GET", "{layer}", "Range: items=0-5", {416}, "RANGE_INVALID"),
    ("GET", "{layer}", "Range: bytes=-0", {416}, "RANGE_INVALID"),
    ("GET", "{layer}", "Range: bytes={size}-", {416}, "RANGE_INVALID"),
    ("POST", "/v2/library/alpha/blobs/uploads/", "", {405}, "UNSUPPORTED"),
    ("PUT", "/v2/library/alpha/manifests/1", "", {405}, "UNSUPPORTED"),
    ("DELETE", "/v2/library/alpha/manifests/1", "", {405}, "UNSUPPORTED"),
    ("GET", "/v2/_catalog", "", {404}, "UNSUPPORTED"),
    ("GET", "/etc/passwd", "", {404}, "NOT_FOUND"),
    ("GET", "/", "", {404}, "NOT_FOUND"),
]


@pytest.mark.parametrize(("method", "target", "header", "statuses", "code"), BAD_REQUESTS)
async def test_bad_requests_get_an_error_and_nothing_else(
    world: World, method: str, target: str, header: str, statuses: set[int], code: str | None
) -> None:
    up = world.upstream
    layer = blobs_of(manifest_of(up.url, "library/alpha", "1")[2])[2]
    size = len(fetch(f"{up.url}/v2/library/alpha/blobs/{layer}")[2])
    target = target.replace("{layer}", f"/v2/library/alpha/blobs/{layer}")
    header = header.replace("{size}", str(size))
    async with mirror_in_process(world.root) as mirror:
        status, headers, body = await raw_http(mirror.host, method, target,
                                               *([header] if header else []))
    assert status in statuses
    if method == "HEAD":
        assert body == b""
    else:
        error = json.loads(body)["errors"][0]
        assert error["message"]
        if code is not None:
            assert error["code"] == code
    if status == 416:
        assert headers["content-range"] == f"bytes */{size}"
    assert b"schemaVersion" not in body and b"root:" not in body


async def test_no_file_outside_a_disk_is_served_even_through_symlinks(tmp_path: Path) -> None:
    """A disk whose layout points outside itself (symlinked blob, symlinked blobs dir)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = b'{"secret": "host file"}'
    (outside / "secret").write_bytes(secret)
    root = tmp_path / "pods"
    disk = kubelet_mount(root, "pod-x", "pvc-x")
    linked_layer = Blob(OCI_LAYER_GZIP, secret)
    plain = image([layer_of({"ok": b"ok"})])
    manifest = json.loads(plain.manifest.data)
    manifest["layers"].append(linked_layer.descriptor())
    linked = Image(Blob(plain.manifest.media_type, json.dumps(manifest).encode()), plain.config,
                   (*plain.layers, linked_layer))
    Layout(disk / "oci").add(linked, "docker.io/library/linked:1")
    blob_file = disk / "oci" / "blobs" / "sha256" / linked_layer.digest.split(":")[1]
    blob_file.unlink()
    blob_file.symlink_to(outside / "secret")
    (disk / "imagecache.json").write_text(CacheManifest("linked", ()).to_json())

    async with mirror_in_process(root) as mirror, aiohttp.ClientSession() as session:
        assert mirror.watcher.counts()["served"] == 1
        assert (await get(session, f"{mirror.url}/v2/library/linked/manifests/1"))[0] == 200
        status, _, body = await get(
            session, f"{mirror.url}/v2/library/linked/blobs/{linked_layer.digest}")
        assert status == 404
        assert secret not in body
        # The whole blobs directory swapped for a link out of the disk.
        config = manifest["config"]["digest"]
        assert (await get(session, f"{mirror.url}/v2/library/linked/blobs/{config}"))[0] == 200
        shutil.copytree(disk / "oci" / "blobs", outside / "blobs")
        shutil.rmtree(disk / "oci" / "blobs" / "sha256")
        (disk / "oci" / "blobs" / "sha256").symlink_to(outside / "blobs" / "sha256")
        assert (await get(session, f"{mirror.url}/v2/library/linked/blobs/{config}"))[0] == 404
