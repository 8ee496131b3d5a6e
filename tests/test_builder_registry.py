"""The builder against a real registry (Debian docker-registry, plain HTTP), read back by
skopeo: layout, index.json names, shared blobs stored and fetched once, multi-arch
selection, imagecache.json, the termination message, not-found errors, reruns."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from builder_proxy import RegistryProxy
from registry_fixture import (
    Image,
    Index,
    Registry,
    builder_args,
    image,
    index,
    layer,
    missing_tools,
    needs,
    run_builder,
    sha256,
    skopeo,
)

from webhook.builder.command import main
from webhook.core.build_result import BuildError, BuildResult, decode_build_result
from webhook.core.cachedisk import MANIFEST_FILE, REF_NAME_ANNOTATION, parse_manifest

pytestmark = [pytest.mark.registry, needs("docker-registry")]


@dataclass
class Content:
    registry: Registry
    proxy: RegistryProxy
    base: Image  # Docker v2s2
    web: Image  # OCI, shares base's first layer
    tool: Image  # OCI
    multi: Index  # amd64 + arm64
    arm_only: Image

    def ref(self, name: str) -> str:
        return f"{self.proxy.host}/{name}"


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Content]:
    with (Registry(tmp_path_factory.mktemp("registry")) as registry,
          RegistryProxy(registry.url) as proxy):
        shared = layer(1, 300_000)
        base = image([shared, layer(2, 200_000)], docker=True)
        web = image([shared, layer(3, 400_000), layer(4, 50_000)])
        tool = image([layer(5, 100_000), layer(6, 10, compress=False)])
        multi = index([image([layer(7, 120_000)]),
                       image([layer(8, 130_000)], arch="arm64", variant="v8")])
        pusher = registry.client()
        pusher.push_image("app/base", "1", base)
        pusher.push_image("app/web", "1", web)
        pusher.push_image("tools/tool", "v2", tool)
        pusher.push_index("app/multi", "1", multi)
        arm_only = image([layer(9, 1000)], arch="arm64")
        pusher.push_image("app/armonly", "1", arm_only)
        yield Content(registry, proxy, base, web, tool, multi, arm_only)


def build(content: Content, out: Path, *images: str, extra: tuple[str, ...] = ()
          ) -> tuple[int, BuildResult | BuildError]:
    return run_builder(out, out.parent / f"{out.name}.termination", images,
                       "--insecure-registry", content.proxy.host, *extra, name="test-cache")


def blobs(out: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (out / "oci/blobs/sha256").iterdir()}


def test_pull_writes_a_layout_skopeo_reads(content: Content, tmp_path: Path) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    before = content.proxy.counts.copy()
    refs = [content.ref("app/base:1"), content.ref("app/web:1"), content.ref("app/multi:1"),
            content.ref(f"app/web@{content.web.digest}")]
    code, result = build(content, out, *refs)
    assert code == 0, result
    assert isinstance(result, BuildResult)

    # index.json: one entry per reference, the normalized name, the registry's digests
    index_doc = json.loads((out / "oci/index.json").read_text())
    entries = {m["annotations"][REF_NAME_ANNOTATION]: m for m in index_doc["manifests"]}
    expected = {refs[0]: content.base, refs[1]: content.web, refs[2]: content.multi,
                refs[3]: content.web}
    assert set(entries) == set(expected)
    for ref, item in expected.items():
        assert entries[ref]["digest"] == item.digest
        assert entries[ref]["mediaType"] == item.manifest.media_type
        assert entries[ref]["size"] == len(item.manifest.data)
    assert json.loads((out / "oci/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    # blobs: every byte verified, the shared base layer once, arm64 left out
    amd64, arm64 = content.multi.images
    want = {content.base.digest, content.web.digest, content.multi.digest, amd64.digest}
    for img in (content.base, content.web, amd64):
        want |= {img.config.digest} | {b.digest for b in img.layers}
    assert blobs(out) == want
    for digest in want:
        data = (out / "oci/blobs/sha256" / digest.split(":")[1]).read_bytes()
        assert sha256(data) == digest
    shared = content.web.layers[0].digest
    assert content.proxy.counts[shared] - before[shared] == 1
    assert arm64.layers[0].digest not in content.proxy.counts
    assert not (out / ".imagecache-tmp").exists()

    # imagecache.json and the termination message agree with the registry
    manifest = parse_manifest((out / MANIFEST_FILE).read_text())
    assert manifest.name == "test-cache" and manifest.platforms == ("linux/amd64",)
    assert not manifest.built_with_credentials and manifest.mirror_may_serve
    by_ref = {i.image: i for i in manifest.images}
    assert by_ref[refs[0]].size == len(content.base.manifest.data) + len(
        content.base.config.data) + sum(len(b.data) for b in content.base.layers)
    assert by_ref[refs[2]].media_type == content.multi.manifest.media_type
    assert [(i.image, i.digest) for i in result.images] == [
        (r, expected[r].digest) for r in refs]
    assert [i.size for i in result.images] == [by_ref[r].size for r in refs]
    assert result.total_bytes == sum(
        p.stat().st_size for p in (out / "oci/blobs/sha256").iterdir())

    # skopeo, a client nobody here wrote, reads the OCI-typed images back
    missing = missing_tools("skopeo")
    if missing:
        pytest.skip(missing)
    for ref in (refs[1], refs[2]):
        local = json.loads(skopeo("inspect", f"oci:{out}/oci:{ref}"))
        remote = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
        assert local["Digest"] == remote["Digest"]
        assert local["Layers"] == remote["Layers"]
    copied = tmp_path / "copied"
    skopeo("copy", f"oci:{out}/oci:{refs[2]}", f"dir:{copied}")
    files = {p.name for p in copied.iterdir()}
    assert {b.digest.split(":")[1] for b in amd64.layers} <= files
    assert json.loads((copied / "manifest.json").read_bytes()) == json.loads(amd64.manifest.data)


def test_resolve_only_reports_sizes_and_writes_nothing(content: Content,
                                                        tmp_path: Path) -> None:
    refs = [content.ref("app/web:1"), content.ref("app/multi:1")]
    full_out = tmp_path / "full"
    full_out.mkdir()
    code, full = build(content, full_out, *refs)
    assert code == 0 and isinstance(full, BuildResult)
    counts = content.proxy.counts.copy()
    missing = tmp_path / "not-mounted"  # the sizing Job has no disk
    code, sized = build(content, missing, *refs, extra=("--resolve-only",))
    assert code == 0 and isinstance(sized, BuildResult)
    assert sized == full  # the same digests, per-image sizes and total a build stores
    assert content.proxy.counts == counts  # no blob was downloaded
    assert not missing.exists()


def test_platforms_from_an_index(content: Content, tmp_path: Path) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    code, result = build(content, out, content.ref("app/multi:1"),
                         extra=("--platform", "linux/arm64", "--platform", "linux/amd64"))
    assert code == 0, result
    amd64, arm64 = content.multi.images
    assert {amd64.digest, arm64.digest, arm64.layers[0].digest, amd64.layers[0].digest} <= blobs(
        out)
    assert parse_manifest((out / MANIFEST_FILE).read_text()).platforms == (
        "linux/arm64", "linux/amd64")


def test_single_platform_image_for_another_platform_warns(
    content: Content, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    code, result = build(content, out, content.ref("app/armonly:1"))
    assert code == 0, result
    assert any("is for linux/arm64 only, not for linux/amd64" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize(
    ("ref", "extra", "message"),
    [
        ("app/web:nosuchtag", (), r"app/web:nosuchtag not found .*no such repository, tag"),
        ("nosuch/repo:1", (), r"nosuch/repo:1 not found .*no such repository"),
        (f"app/web@sha256:{'0' * 64}", (), "not found"),
        ("app/multi:1", ("--platform", "linux/s390x"),
         r"no manifest for platform linux/s390x .*has: linux/amd64, linux/arm64"),
    ],
)
def test_not_found(content: Content, tmp_path: Path, ref: str, extra: tuple[str, ...],
                   message: str) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    code, result = build(content, out, content.ref("tools/tool:v2"), content.ref(ref),
                         extra=extra)
    assert code == 10
    assert isinstance(result, BuildError) and result.reason == "ImageNotFound"
    assert re.search(message, result.message), result.message
    assert not (out / MANIFEST_FILE).exists()


def test_rerun_fetches_nothing_and_prunes(content: Content, tmp_path: Path) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    assert build(content, out, content.ref("app/web:1"), content.ref("tools/tool:v2"))[0] == 0
    counts = content.proxy.counts.copy()
    code, _ = build(content, out, content.ref("app/web:1"))
    assert code == 0
    assert content.proxy.counts == counts  # every blob was already verified on disk
    assert content.tool.layers[0].digest not in blobs(out)  # the dropped image's blobs go
    images = parse_manifest((out / MANIFEST_FILE).read_text()).images
    assert [i.image for i in images] == [content.ref("app/web:1")]


def test_plain_http_needs_insecure_registry(content: Content, tmp_path: Path) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    term = tmp_path / "term"
    code = main(builder_args(out, term, [content.ref("app/web:1")], retries=0))
    result = decode_build_result(term.read_text())
    assert code == 14, result
    assert isinstance(result, BuildError) and result.reason == "RegistryUnreachable"
    assert "--insecure-registry" in result.message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "app/Web:1"], "repository name must be lowercase"),
        (["--image", "a:1", "--platform", "linux"], "--platform"),
        (["--image", "a:1", "--concurrency", "0"], "--concurrency"),
        (["--image", "a:1", "--pull-secret-file", "/nonexistent/x"], "cannot read it"),
        (["--image", "a:1", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    term = tmp_path / "term"
    code = main(["--name", "c", "--output", str(tmp_path), "--termination-log", str(term),
                 "--insecure-registry", "127.0.0.1", *args])
    result = decode_build_result(term.read_text())
    assert code == 2
    assert isinstance(result, BuildError) and result.reason == "InvalidArgument"
    assert message in result.message
