"""webhook.mirror.core.mirror_routes: paths, ?ns=, Range, Accept and tag pages, table by table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook.mirror.core.mirror_routes import (
    BASE,
    BLOB,
    MANIFEST,
    TAGS,
    ApiError,
    ByteRange,
    Route,
    accepts,
    page_of_tags,
    parse_range,
    parse_route,
)

SHA = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "ab" * 64

ROUTES = [
    # (method, path, ns, default registry) -> Route, or (status, code) of the ApiError
    (("GET", "/v2/", None, "docker.io"), Route(BASE)),
    (("HEAD", "/v2", None, "docker.io"), Route(BASE)),
    (("GET", "/v2/nginx/manifests/1.25", None, "docker.io"),
     Route(MANIFEST, "docker.io", "library/nginx", "1.25")),
    (("HEAD", "/v2/library/nginx/manifests/latest", "docker.io", ""),
     Route(MANIFEST, "docker.io", "library/nginx", "latest")),
    (("GET", "/v2/library/nginx/manifests/latest", "index.docker.io", ""),
     Route(MANIFEST, "docker.io", "library/nginx", "latest")),
    (("GET", "/v2/x/nginx/manifests/1", "GHCR.IO", ""), Route(MANIFEST, "ghcr.io", "x/nginx", "1")),
    (("GET", "/v2/team/app/manifests/" + SHA, "127.0.0.1:5000", ""),
     Route(MANIFEST, "127.0.0.1:5000", "team/app", SHA)),
    (("GET", "/v2/app/blobs/" + SHA, "localhost:5000", ""),
     Route(BLOB, "localhost:5000", "app", SHA)),
    (("GET", "/v2/my.org/app/blobs/" + SHA512, "ghcr.io", ""),
     Route(BLOB, "ghcr.io", "my.org/app", SHA512)),
    (("GET", "/v2/a/blobs/b/manifests/t", "ghcr.io", ""),
     Route(MANIFEST, "ghcr.io", "a/blobs/b", "t")),
    (("GET", "/v2/ghcr.io/x/manifests/1", None, "docker.io"),
     Route(MANIFEST, "docker.io", "ghcr.io/x", "1")),
    (("GET", "/v2/library/nginx/tags/list", "docker.io", ""),
     Route(TAGS, "docker.io", "library/nginx")),
    (("GET", "/v2/x/manifests/1", "quay.io", ""), Route(MANIFEST, "quay.io", "x", "1")),
    # errors
    (("POST", "/v2/x/blobs/uploads/", None, "docker.io"), (405, "UNSUPPORTED")),
    (("DELETE", "/v2/x/manifests/1", None, "docker.io"), (405, "UNSUPPORTED")),
    (("GET", "/", None, "docker.io"), (404, "NOT_FOUND")),
    (("GET", "/v1/x/manifests/1", None, "docker.io"), (404, "NOT_FOUND")),
    (("GET", "/v2/_catalog", None, "docker.io"), (404, "UNSUPPORTED")),
    (("GET", "/v2/x/manifests", None, "docker.io"), (404, "UNSUPPORTED")),
    (("GET", "/v2/x/referrers/" + SHA, None, "docker.io"), (404, "UNSUPPORTED")),
    (("GET", "/v2/x/manifests/1", None, ""), (404, "NAME_UNKNOWN")),
    (("GET", "/v2/x/manifests/1", "library", ""), (400, "NAME_INVALID")),
    (("GET", "/v2/x/manifests/1", "a.io/b", ""), (400, "NAME_INVALID")),
    (("GET", "/v2/x/manifests/1", "", ""), (400, "NAME_INVALID")),
    (("GET", "/v2/x/manifests/1", "bad host!", ""), (400, "NAME_INVALID")),
    (("GET", "/v2/../x/manifests/1", None, "docker.io"), (400, "NAME_INVALID")),
    (("GET", "/v2/a/../../b/manifests/1", None, "docker.io"), (400, "NAME_INVALID")),
    (("GET", "/v2//x/manifests/1", None, "docker.io"), (400, "NAME_INVALID")),
    (("GET", "/v2/X/manifests/1", None, "docker.io"), (400, "NAME_INVALID")),
    (("GET", "/v2/" + "a" * 300 + "/manifests/1", None, "docker.io"), (400, "NAME_INVALID")),
    (("GET", "/v2/x/manifests/.hidden", None, "docker.io"), (400, "NAME_INVALID")),
    (("GET", "/v2/x/manifests/" + "t" * 129, None, "docker.io"), (400, "NAME_INVALID")),
    (("GET", "/v2/x/blobs/latest", None, "docker.io"), (400, "DIGEST_INVALID")),
    (("GET", "/v2/x/blobs/sha256:abc", None, "docker.io"), (400, "DIGEST_INVALID")),
    (("GET", "/v2/x/blobs/" + SHA.upper(), None, "docker.io"), (400, "DIGEST_INVALID")),
    (("GET", "/v2/x/blobs/md5:" + "a" * 32, None, "docker.io"), (400, "DIGEST_INVALID")),
    (("GET", "/v2/x/blobs/sha256:" + "a" * 65, None, "docker.io"), (400, "DIGEST_INVALID")),
    (("GET", "/v2/x/manifests/sha256:..", None, "docker.io"), (400, "DIGEST_INVALID")),
    (("GET", "/v2/x/blobs/" + SHA + "/..", None, "docker.io"), (404, "UNSUPPORTED")),
    (("GET", "/v2/../../etc/tags/list", None, "docker.io"), (400, "NAME_INVALID")),
]


@pytest.mark.parametrize(("args", "expected"), ROUTES)
def test_parse_route(args: tuple[str, str, str | None, str], expected: object) -> None:
    got = parse_route(*args)
    if isinstance(expected, Route):
        assert got == expected
    else:
        assert isinstance(got, ApiError)
        assert (got.status, got.code) == expected
        assert got.message
        assert got.body() == {"errors": [{"code": got.code, "message": got.message,
                                          "detail": {}}]}


def test_route_image_spelling() -> None:
    assert Route(MANIFEST, "docker.io", "library/x", "1").image == "docker.io/library/x:1"
    assert Route(BLOB, "ghcr.io", "a/b", SHA).image == f"ghcr.io/a/b@{SHA}"


RANGES = [
    # (header, size) -> (start, length, partial) or None for a 416
    ((None, 100), (0, 100, False)),
    (("", 100), (0, 100, False)),
    (("bytes=0-9", 100), (0, 10, True)),
    (("bytes=90-", 100), (90, 10, True)),
    (("bytes=90-1000", 100), (90, 10, True)),
    (("bytes=-10", 100), (90, 10, True)),
    (("bytes=-1000", 100), (0, 100, True)),
    (("bytes=99-99", 100), (99, 1, True)),
    (("Bytes = 0-0", 100), (0, 1, True)),
    ((" bytes=5-", 100), (5, 95, True)),
    (("bytes=0-", 0), None),
    (("bytes=100-", 100), None),
    (("bytes=100-200", 100), None),
    (("bytes=10-5", 100), None),
    (("bytes=-0", 100), None),
    (("bytes=-", 100), None),
    (("bytes=0-1,5-6", 100), None),
    (("bytes=a-b", 100), None),
    (("items=0-5", 100), None),
    (("0-5", 100), None),
    (("bytes=99999999999999999999999-", 100), None),
    (("bytes=0-99999999999999999999999", 100), None),
    (("bytes=+1-2", 100), None),
    (("bytes=1--2", 100), None),
]


@pytest.mark.parametrize(("args", "expected"), RANGES)
def test_parse_range(args: tuple[str | None, int], expected: tuple[int, int, bool] | None) -> None:
    header, size = args
    got = parse_range(header, size)
    if expected is None:
        assert isinstance(got, ApiError)
        assert (got.status, got.code) == (416, "RANGE_INVALID")
        assert dict(got.headers) == {"Content-Range": f"bytes */{size}"}
    else:
        assert isinstance(got, ByteRange)
        assert (got.start, got.length, got.partial, got.size) == (*expected, size)


@given(size=st.integers(0, 10**12), first=st.integers(0, 10**13),
       last=st.one_of(st.none(), st.integers(0, 10**13)), suffix=st.booleans())
def test_a_range_never_leaves_the_blob(size: int, first: int, last: int | None,
                                       suffix: bool) -> None:
    header = f"bytes=-{first}" if suffix else f"bytes={first}-{'' if last is None else last}"
    got = parse_range(header, size)
    if isinstance(got, ByteRange):
        assert 0 <= got.start < size
        assert 1 <= got.length <= size - got.start
        assert got.content_range == f"bytes {got.start}-{got.start + got.length - 1}/{size}"
    else:
        assert got.status == 416


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPTS = [
    ([], True),
    ([""], True),
    (["*/*"], True),
    (["application/*"], True),
    ([OCI_MANIFEST], True),
    (["application/vnd.docker.distribution.manifest.v2+json", OCI_MANIFEST + "; q=0.5"], True),
    (["application/vnd.docker.distribution.manifest.v2+json, " + OCI_MANIFEST.upper()], True),
    (["application/vnd.docker.distribution.manifest.v2+json"], False),
    (["text/*"], False),
]


@pytest.mark.parametrize(("headers", "expected"), ACCEPTS)
def test_accepts(headers: list[str], expected: bool) -> None:
    assert accepts(headers, OCI_MANIFEST) is expected


PAGES = [
    ((["b", "a", "c", "a"], None, None), ["a", "b", "c"]),
    ((["b", "a", "c"], "2", None), ["a", "b"]),
    ((["b", "a", "c"], None, "a"), ["b", "c"]),
    ((["b", "a", "c"], "1", "a"), ["b"]),
    ((["b", "a", "c"], "0", None), []),
    ((["a"], "x", None), "PAGINATION_NUMBER_INVALID"),
    ((["a"], "99999999", None), "PAGINATION_NUMBER_INVALID"),
]


@pytest.mark.parametrize(("args", "expected"), PAGES)
def test_page_of_tags(args: tuple[list[str], str | None, str | None], expected: object) -> None:
    got = page_of_tags(*args)
    if isinstance(expected, str):
        assert isinstance(got, ApiError)
        assert (got.status, got.code) == (400, expected)
    else:
        assert got == expected
