"""Table tests for the builder's pure core: challenges, pull-secret matching, manifests and
platforms, registry endpoints, retries, the OCI layout, the plan, the termination message."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.builder.core.build_plan import FetchedManifest, ResolvedImage, plan_build
from webhook.builder.core.registry_auth import (
    Credential,
    InvalidDockerConfig,
    credentials_for,
    parse_docker_config,
    parse_token_response,
    parse_www_authenticate,
)
from webhook.builder.core.registry_endpoint import (
    api_host,
    is_insecure,
    manifest_path,
    registry_error_codes,
    registry_error_summary,
)
from webhook.builder.core.registry_retry import backoff_delay, parse_retry_after
from webhook.core.build_errors import EXIT_CODES, Reason, format_bytes
from webhook.core.build_result import (
    LIMIT,
    BuildError,
    BuildResult,
    InvalidBuildResult,
    compact_digest,
    decode_build_result,
    encode_build_error,
    encode_build_result,
    expand_digest,
)
from webhook.core.ocilayout import (
    IndexEntry,
    InvalidDigest,
    blob_relpath,
    index_file_body,
    split_digest,
)
from webhook.core.registry_manifest import (
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Descriptor,
    InvalidManifest,
    Platform,
    config_platform,
    parse_manifest,
    select_platforms,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
D4 = "sha256:" + "4" * 64
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# ------------------------------------------------------------------ WWW-Authenticate


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
         'scope="repository:library/nginx:pull"',
         [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/nginx:pull"})]),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        ('Basic realm="a", Bearer realm="https://t/x", service=reg',
         [("basic", {"realm": "a"}), ("bearer", {"realm": "https://t/x", "service": "reg"})]),
        ('BEARER Realm="r" , Service="s"', [("bearer", {"realm": "r", "service": "s"})]),
        ('Bearer realm="with \\"quotes\\" and, comma"',
         [("bearer", {"realm": 'with "quotes" and, comma'})]),
        ("Bearer", [("bearer", {})]),
        ("", []),
    ],
)
def test_parse_www_authenticate(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = [(c.scheme, c.params) for c in parse_www_authenticate(header)]
    assert got == expected


@pytest.mark.parametrize(
    ("body", "token", "seconds"),
    [
        (b'{"token":"abc","expires_in":300}', "abc", 300),
        (b'{"access_token":"xyz"}', "xyz", 60),  # default lifetime
        (b'{"token":"t","expires_in":5}', "t", 60),  # at least 60 s
    ],
)
def test_parse_token_response(body: bytes, token: str, seconds: int) -> None:
    parsed = parse_token_response(body, NOW, "realm")
    assert parsed.value == token
    assert parsed.expires_at == NOW + timedelta(seconds=seconds)
    assert parsed.fresh(NOW) and not parsed.fresh(NOW + timedelta(seconds=seconds))


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"expires_in":3}', b'{"token":""}'])
def test_parse_token_response_refuses(body: bytes) -> None:
    with pytest.raises(InvalidDockerConfig, match="token endpoint realm"):
        parse_token_response(body, NOW, "realm")


# ------------------------------------------------------------------ pull secrets


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_parse_docker_config_forms() -> None:
    text = json.dumps({"auths": {
        "a.io": {"auth": _auth("u1", "p:with:colons")},
        "b.io": {"username": "u2", "password": "p2"},
        "c.io": {"identitytoken": "refresh"},
    }})
    creds = parse_docker_config(text, "/secret/x")
    assert [(c.key, c.username, c.password, c.identity_token) for c in creds] == [
        ("a.io", "u1", "p:with:colons", ""), ("b.io", "u2", "p2", ""), ("c.io", "", "", "refresh")]
    assert creds[0].basic() == "Basic " + _auth("u1", "p:with:colons")
    assert "p:with" not in repr(creds[0])  # secrets stay out of logs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "is not JSON"),
        ('{"a.io": {"auth": "x"}}', "no 'auths' object"),
        ('{"auths": {"a.io": "x"}}', r"auths\['a.io'\] must be an object"),
        ('{"auths": {"a.io": {"auth": "%%%"}}}', "not base64"),
        ('{"auths": {"a.io": {"auth": "' + base64.b64encode(b"nocolon").decode() + '"}}}',
         "user:password"),
        ('{"auths": {"a.io": {}}}', "has no credentials"),
    ],
)
def test_parse_docker_config_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidDockerConfig, match=message) as info:
        parse_docker_config(text, "/secret/file")
    assert "/secret/file" in str(info.value)


def _creds(*keys: str) -> list[Credential]:
    return [Credential("/s", k, "u", "p") for k in keys]


@pytest.mark.parametrize(
    ("keys", "registry", "repository", "expected"),
    [
        (["registry.example.com"], "registry.example.com", "team/app", ["registry.example.com"]),
        (["https://registry.example.com"], "registry.example.com", "app",
         ["https://registry.example.com"]),
        (["registry.example.com:5000"], "registry.example.com", "app", []),  # port must match
        (["registry.example.com"], "registry.example.com:5000", "app", []),
        (["registry.example.com:5000"], "registry.example.com:5000", "app",
         ["registry.example.com:5000"]),
        (["*.example.com"], "registry.example.com", "app", ["*.example.com"]),
        (["*.example.com"], "a.b.example.com", "app", []),  # one label per glob
        (["*.example.com"], "example.com", "app", []),
        (["registry.example.com/team"], "registry.example.com", "team/app",
         ["registry.example.com/team"]),
        (["registry.example.com/team"], "registry.example.com", "other/app", []),
        (["registry.example.com/v2/"], "registry.example.com", "app",
         ["registry.example.com/v2/"]),  # /v2/ is the host itself
        (["https://index.docker.io/v1/"], "docker.io", "library/nginx",
         ["https://index.docker.io/v1/"]),
        (["docker.io", "registry-1.docker.io"], "docker.io", "library/nginx",
         ["docker.io", "registry-1.docker.io"]),  # equal keys keep the secret's order
        (["REGISTRY.Example.com"], "registry.example.com", "app", ["REGISTRY.Example.com"]),
        # most specific first, as the kubelet's reverse-sorted index does
        (["registry.example.com", "registry.example.com/team", "*.example.com"],
         "registry.example.com", "team/app",
         ["registry.example.com/team", "registry.example.com", "*.example.com"]),
        (["127.0.0.1:5000"], "127.0.0.1:5000", "x", ["127.0.0.1:5000"]),
        (["[::1]:5000"], "[::1]:5000", "x", ["[::1]:5000"]),
    ],
)
def test_credentials_for(keys: list[str], registry: str, repository: str,
                         expected: list[str]) -> None:
    assert [c.key for c in credentials_for(_creds(*keys), registry, repository)] == expected


# ------------------------------------------------------------------ manifests and platforms


def _desc(digest: str, media: str = "application/vnd.oci.image.layer.v1.tar+gzip",
          size: int = 10, **extra: object) -> dict[str, object]:
    return {"mediaType": media, "digest": digest, "size": size, **extra}


def _manifest(media: str | None = MEDIA_OCI_MANIFEST) -> bytes:
    doc: dict[str, object] = {"schemaVersion": 2, "config": _desc(D1, size=3),
                              "layers": [_desc(D2, size=7), _desc(D3, size=11)]}
    if media:
        doc["mediaType"] = media
    return json.dumps(doc).encode()


def _index(media: str = MEDIA_OCI_INDEX) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media, "manifests": [
        _desc(D1, MEDIA_OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
        _desc(D2, MEDIA_OCI_MANIFEST,
              platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        _desc(D3, MEDIA_OCI_MANIFEST,
              platform={"os": "linux", "architecture": "arm", "variant": "v7"}),
        _desc(D4, MEDIA_OCI_MANIFEST, platform={"os": "unknown", "architecture": "unknown"}),
    ]}).encode()


@pytest.mark.parametrize(
    ("body", "content_type", "media", "is_index"),
    [
        (_manifest(), "", MEDIA_OCI_MANIFEST, False),
        (_manifest(MEDIA_DOCKER_MANIFEST), MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST, False),
        (_manifest(None), MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST, False),  # from header
        (_manifest(None), "", MEDIA_OCI_MANIFEST, False),  # from the shape
        (_index(), "", MEDIA_OCI_INDEX, True),
        (_index(MEDIA_DOCKER_LIST), "", MEDIA_DOCKER_LIST, True),
    ],
)
def test_parse_manifest(body: bytes, content_type: str, media: str, is_index: bool) -> None:
    doc = parse_manifest(body, content_type, "img")
    assert (doc.media_type, doc.is_index) == (media, is_index)
    if not is_index:
        assert doc.config is not None and doc.config.digest == D1
        assert [(d.digest, d.size) for d in doc.layers] == [(D2, 7), (D3, 11)]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{", "", "not JSON"),
        (b'{"schemaVersion":1,"fsLayers":[]}', "", "schema 1"),
        (b"{}", "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"),
        (b'{"schemaVersion":2,"mediaType":"text/html"}', "", "unsupported manifest media type"),
        (json.dumps({"mediaType": MEDIA_OCI_MANIFEST, "config": _desc(D1),
                     "layers": [_desc("sha256:../../etc/passwd")]}).encode(), "",
         r"layers\[0\].*sha256"),
        (json.dumps({"mediaType": MEDIA_OCI_MANIFEST, "config": _desc(D1),
                     "layers": [_desc(D2, size=-1)]}).encode(), "", "non-negative"),
        (json.dumps({"mediaType": MEDIA_OCI_INDEX}).encode(), "", "no 'manifests'"),
    ],
)
def test_parse_manifest_errors(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(InvalidManifest, match=message) as info:
        parse_manifest(body, content_type, "reg.io/img:1")
    assert "reg.io/img:1" in str(info.value)


@pytest.mark.parametrize(
    ("asked", "chosen"),
    [
        (["linux/amd64"], [D1]),
        (["linux/arm64"], [D2]),  # v8 is arm64's default variant
        (["linux/arm64/v8"], [D2]),
        (["linux/aarch64"], [D2]),
        (["linux/arm"], [D3]),  # v7 is arm's default
        (["linux/arm64", "linux/amd64"], [D2, D1]),
        (["linux/x86_64", "linux/amd64"], [D1]),  # the same platform twice is pulled once
    ],
)
def test_select_platforms(asked: list[str], chosen: list[str]) -> None:
    index = parse_manifest(_index(), "", "img")
    picked = select_platforms(index, [Platform.parse(p) for p in asked], "img")
    assert [d.digest for _, d in picked] == chosen


def test_select_platforms_missing_lists_what_there_is() -> None:
    index = parse_manifest(_index(), "", "img")
    with pytest.raises(InvalidManifest, match=r"linux/s390x.*linux/amd64, linux/arm/v7"):
        select_platforms(index, [Platform.parse("linux/s390x")], "img")


@pytest.mark.parametrize(
    ("body", "platform"),
    [
        (b'{"os":"linux","architecture":"arm64","variant":"v8"}', "linux/arm64"),
        (b'{"os":"linux","architecture":"arm","variant":"7"}', "linux/arm/v7"),
        (b'{"os":"linux","architecture":"amd64"}', "linux/amd64"),
        (b'{"architecture":"amd64"}', None),
        (b"[1]", None),
        (b"{", None),
    ],
)
def test_config_platform(body: bytes, platform: str | None) -> None:
    got = config_platform(body)
    assert (str(got) if got else None) == platform


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_platform_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match="os/architecture"):
        Platform.parse(text)


# ------------------------------------------------------------------ endpoints and retries


@pytest.mark.parametrize(
    ("registry", "host"),
    [("docker.io", "registry-1.docker.io"), ("ghcr.io", "ghcr.io"),
     ("127.0.0.1:5000", "127.0.0.1:5000")],
)
def test_api_host(registry: str, host: str) -> None:
    assert api_host(registry) == host


@pytest.mark.parametrize(
    ("registry", "listed", "insecure"),
    [
        ("127.0.0.1:5000", ["127.0.0.1:5000"], True),
        ("127.0.0.1:5000", ["127.0.0.1"], True),  # a host without port covers its ports
        ("127.0.0.1:5000", ["127.0.0.1:5001"], False),
        ("127.0.0.1", ["127.0.0.1:5000"], False),
        ("reg.local", ["http://REG.local/"], True),
        ("docker.io", ["registry-1.docker.io"], True),
        ("ghcr.io", [], False),
    ],
)
def test_is_insecure(registry: str, listed: list[str], insecure: bool) -> None:
    assert is_insecure(registry, listed) is insecure


def test_paths_and_error_bodies() -> None:
    assert manifest_path("library/nginx", "1.25") == "/v2/library/nginx/manifests/1.25"
    assert manifest_path("a", D1) == f"/v2/a/manifests/{D1}"
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
    assert registry_error_summary(body) == "MANIFEST_UNKNOWN: manifest unknown"
    assert registry_error_codes(body) == {"MANIFEST_UNKNOWN"}
    assert registry_error_summary(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert registry_error_summary(b"") == "(empty body)"


@pytest.mark.parametrize(
    ("attempt", "jitter", "retry_after", "delay"),
    [(1, 0.0, None, 0.5), (2, 0.0, None, 1.0), (4, 0.0, None, 4.0), (10, 0.0, None, 30.0),
     (2, 0.999, None, 0.5005), (1, 0.0, 7.0, 7.0), (3, 0.0, 0.1, 2.0)],
)
def test_backoff_delay(attempt: int, jitter: float, retry_after: float | None,
                       delay: float) -> None:
    assert backoff_delay(attempt, 0.5, 30.0, jitter, retry_after) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5.0), ("100000", 300.0), ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0),
     ("Wed, 31 Dec 2025 00:00:00 GMT", 0.0), ("soon", None), (None, None)],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


# ------------------------------------------------------------------ OCI layout


@pytest.mark.parametrize(
    ("digest", "path"),
    [(D1, "blobs/sha256/" + "1" * 64), ("sha512:" + "a" * 128, "blobs/sha512/" + "a" * 128)],
)
def test_blob_relpath(digest: str, path: str) -> None:
    assert blob_relpath(digest) == path


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "1" * 32, "sha256:" + "1" * 63,
     "sha256", "sha256:" + "1" * 64 + "/x"],
)
def test_split_digest_refuses(digest: str) -> None:
    with pytest.raises(InvalidDigest):
        split_digest(digest)


def test_index_file_body() -> None:
    body = json.loads(index_file_body([
        IndexEntry("docker.io/library/nginx:1.25", MEDIA_OCI_INDEX, D1, 100),
        IndexEntry("docker.io/library/nginx@" + D1, MEDIA_OCI_INDEX, D1, 100),
        IndexEntry("docker.io/library/nginx:1.25", MEDIA_OCI_INDEX, D1, 100),  # duplicate
    ]))
    assert body["schemaVersion"] == 2 and body["mediaType"] == MEDIA_OCI_INDEX
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in body["manifests"]] == [
        "docker.io/library/nginx:1.25", "docker.io/library/nginx@" + D1]
    assert body["manifests"][0] == {"mediaType": MEDIA_OCI_INDEX, "digest": D1, "size": 100,
                                    "annotations": body["manifests"][0]["annotations"]}


# ------------------------------------------------------------------ plan


def _fetched(digest: str, body: bytes, media: str = "") -> FetchedManifest:
    doc = parse_manifest(body, media, "x")
    return FetchedManifest(Descriptor(doc.media_type, digest, len(body)), body, doc)


def test_plan_shares_blobs_and_skips_present() -> None:
    shared = _desc(D2, size=7)
    m1 = json.dumps({"mediaType": MEDIA_OCI_MANIFEST, "config": _desc(D1, size=3),
                     "layers": [shared]}).encode()
    m2 = json.dumps({"mediaType": MEDIA_OCI_MANIFEST, "config": _desc(D3, size=5),
                     "layers": [shared, _desc(D4, size=100),
                                _desc("sha256:" + "5" * 64, size=50,
                                      urls=["https://foreign/x"])]}).encode()
    a = ResolvedImage("a", "r/a:1", _fetched("sha256:" + "a" * 64, m1))
    b = ResolvedImage("b", "r/b:1", _fetched("sha256:" + "b" * 64, m2))
    assert a.size == len(m1) + 3 + 7
    assert b.size == len(m2) + 5 + 7 + 100  # the foreign layer is not stored
    plan = plan_build([a, b, a], present=[D4])
    assert [d.digest for d in plan.fetch] == [D1, D2, D3]
    assert [d.digest for d in plan.reuse] == [D4]
    assert len(plan.manifests) == 2
    assert plan.bytes_to_fetch == 3 + 7 + 5
    assert plan.bytes_to_write == len(m1) + len(m2) + 15


# ------------------------------------------------------------------ termination message


def _digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def _images(count: int, name_len: int = 30, size: int = 1000) -> list[tuple[str, str, int]]:
    return [(f"registry.example.com/{'x' * name_len}/app{n}:1.0", _digest(n), size + n)
            for n in range(count)]


@pytest.mark.parametrize(
    ("count", "name_len", "size", "field", "note"),
    [
        (1, 30, 1000, "images", ""),
        (27, 30, 1000, "images", ""),
        (28, 30, 10**12, "images", "sizes dropped"),
        (29, 30, 1000, "digests", "references and sizes dropped"),
        (30, 200, 1000, "digests", "references and sizes dropped"),
        (82, 30, 1000, "digests", "references and sizes dropped"),
        (85, 30, 1000, "digests", "only the first"),
        (500, 30, 1000, "digests", "only the first"),
    ],
)
def test_build_result_degrades_deliberately(count: int, name_len: int, size: int, field: str,
                                            note: str) -> None:
    images = _images(count, name_len, size)
    text = encode_build_result(images, total_bytes=123456789)
    assert len(text.encode()) <= LIMIT
    assert field in json.loads(text)
    result = decode_build_result(text, requested=[i for i, _, _ in images])
    assert isinstance(result, BuildResult)
    assert result.total_bytes == 123456789 and len(result.images) == count
    assert (note in result.note) if note else result.note == ""
    for (ref, digest, size), got in zip(images, result.images, strict=True):
        assert got.image == ref
        assert got.digest in (digest, None)
        assert got.size in (size, None)
    kept = [g for g in result.images if g.digest is not None]
    assert kept, "at least some digests always fit"
    if "only the first" in note:
        assert len(kept) < count and result.images[-1].digest is None


def test_build_result_positional_without_requested() -> None:
    text = encode_build_result(_images(60, 200), 1)
    result = decode_build_result(text)
    assert isinstance(result, BuildResult)
    assert result.images[0].image is None and result.images[0].digest == _digest(0)
    with pytest.raises(InvalidBuildResult, match="60 images but 2 were requested"):
        decode_build_result(text, requested=["a", "b"])


@given(st.lists(st.tuples(st.text(min_size=1, max_size=300), st.integers(0, 2**60),
                          st.integers(0, 2**40)), max_size=300),
       st.integers(0, 2**50))
@settings(max_examples=60, deadline=None)
def test_build_result_always_fits_and_round_trips(
    rows: list[tuple[str, int, int]], total: int
) -> None:
    images = [(ref, _digest(d), size) for ref, d, size in rows]
    text = encode_build_result(images, total)
    assert len(text.encode()) <= LIMIT
    result = decode_build_result(text, requested=[r for r, _, _ in images])
    assert isinstance(result, BuildResult) and result.total_bytes == total
    assert [i.digest for i in result.images if i.digest] == [
        d for _, d, _ in images][: len([i for i in result.images if i.digest])]


@pytest.mark.parametrize("message", ["short", "é" * 5000, "x" * 10000, 'quote " \\ \n' * 800])
def test_build_error_fits(message: str) -> None:
    text = encode_build_error(Reason.UNAUTHORIZED, message)
    assert len(text.encode()) <= LIMIT
    result = decode_build_result(text)
    assert isinstance(result, BuildError) and result.reason == "Unauthorized"
    if len(message) < 100:
        assert result.message == message
    else:
        assert result.message.endswith("(truncated)")
        assert message.startswith(result.message.removesuffix("... (truncated)"))


@pytest.mark.parametrize(
    ("text", "message"),
    [("nope", "not JSON"), ("[]", "JSON object"), ('{"v":2,"n":0,"total":0,"images":[]}',
                                                    "version 2"),
     ('{"v":1,"n":1,"total":0,"images":[]}', "not n=1"),
     ('{"v":1,"n":0,"total":-1,"images":[]}', "'total'"),
     ('{"v":1,"n":1,"total":0,"images":[["a"]]}', "images\\[0\\]"),
     ('{"v":1,"n":1,"total":0,"digests":["zzz"]}', "algorithm code"),
     ('{"v":1,"n":2,"total":0,"digests":[]}', "omits 0, not n=2"),
     ('{"v":1,"n":0,"total":0}', "neither")],
)
def test_decode_build_result_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidBuildResult, match=message):
        decode_build_result(text)


def test_compact_digest_round_trip() -> None:
    for digest in (D1, "sha512:" + "f" * 128):
        assert expand_digest(compact_digest(digest)) == digest
    assert len(compact_digest(D1)) == 44


def test_exit_codes_distinct() -> None:
    assert len(set(EXIT_CODES.values())) == len(Reason) == len(EXIT_CODES)
    assert 0 not in EXIT_CODES.values()


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (5 * 2**30, "5.0 GiB")])
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text
