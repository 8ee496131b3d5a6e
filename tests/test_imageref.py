"""Image references: what a pod may write, normalized, and what must be refused."""

from __future__ import annotations

import pytest

from webhook.core.imageref import InvalidReference, normalize, parse

D = "sha256:" + "a" * 64
E = "sha256:" + "b" * 64

NORMALIZED = [
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.25", "docker.io/library/nginx:1.25"),
    ("nginx:latest", "docker.io/library/nginx:latest"),
    ("library/nginx", "docker.io/library/nginx:latest"),
    ("library/nginx:1.25", "docker.io/library/nginx:1.25"),
    ("docker.io/nginx", "docker.io/library/nginx:latest"),
    ("docker.io/library/nginx:1.25", "docker.io/library/nginx:1.25"),
    ("index.docker.io/library/nginx:1.25", "docker.io/library/nginx:1.25"),
    ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
    ("registry-1.docker.io/bitnami/redis:7", "docker.io/bitnami/redis:7"),
    ("bitnami/redis", "docker.io/bitnami/redis:latest"),
    ("ghcr.io/org/app:v1.2.3", "ghcr.io/org/app:v1.2.3"),
    ("quay.io/a/b/c/d:tag", "quay.io/a/b/c/d:tag"),
    ("registry:5000/a/b:tag", "registry:5000/a/b:tag"),
    ("registry:5000/a", "registry:5000/a:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app:dev", "localhost:5000/app:dev"),
    ("127.0.0.1:5000/team/app:1", "127.0.0.1:5000/team/app:1"),
    ("[::1]:5000/app:1", "[::1]:5000/app:1"),
    ("REGISTRY.Example.com/app:1", "registry.example.com/app:1"),
    (f"host.io/a/b@{D}", f"host.io/a/b@{D}"),
    (f"nginx@{D}", f"docker.io/library/nginx@{D}"),
    (f"nginx:1.25@{D}", f"docker.io/library/nginx:1.25@{D}"),
    (f"registry:5000/a:t@{D}", f"registry:5000/a:t@{D}"),
    ("my-app_x.y__z:Tag_1.0-rc", "docker.io/library/my-app_x.y__z:Tag_1.0-rc"),
    ("a--b/c:1", "docker.io/a--b/c:1"),
    ("gcr.io/distroless/static:nonroot", "gcr.io/distroless/static:nonroot"),
    ("x" * 10 + ":" + "t" * 128, "docker.io/library/" + "x" * 10 + ":" + "t" * 128),
]


@pytest.mark.parametrize(("written", "normalized"), NORMALIZED)
def test_normalizes(written: str, normalized: str) -> None:
    assert normalize(written) == normalized
    # Normalizing is idempotent.
    assert normalize(normalized) == normalized


INVALID = [
    ("", "empty"),
    ("Nginx", "lowercase"),
    ("library/Nginx:1", "lowercase"),
    ("docker.io/Library/nginx", "lowercase"),
    ("nginx:", "tag"),
    ("nginx:-bad", "tag"),
    ("nginx:.bad", "tag"),
    ("nginx:" + "t" * 129, "tag"),
    ("nginx:a/b", "host"),
    ("nginx@sha256:abc", "64"),
    ("nginx@sha256:" + "A" * 64, "64"),
    ("nginx@md5", "digest"),
    ("nginx@", "digest"),
    ("a//b", "path component"),
    ("/nginx", "path component"),
    ("nginx/", "path component"),
    ("-nginx", "path component"),
    ("nginx-", "path component"),
    ("ng..inx", "path component"),
    ("ng inx", "white space"),
    (" nginx", "white space"),
    ("host:port/app", "host"),
    ("exa_mple.com/app", "host"),
    ("@" + D, "no repository"),
    (":tag", "no repository"),
    ("a/" * 130 + "b", "longer than 255"),
    ("docker.io/", "no repository"),
]


@pytest.mark.parametrize(("written", "reason"), INVALID)
def test_rejects_with_a_reason(written: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse(written)
    assert reason in str(caught.value)
    assert repr(written) in str(caught.value)


SAME = [
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.25", "index.docker.io/library/nginx:1.25"),
    (f"nginx:1.25@{D}", f"docker.io/library/nginx@{D}"),
    (f"nginx:1.24@{D}", f"nginx:1.25@{D}"),  # the digest pins the content
    ("bitnami/redis:7", "registry-1.docker.io/bitnami/redis:7"),
    ("Registry.io/app", "registry.io/app:latest"),
    ("registry/app", "docker.io/registry/app"),  # no dot or port: a Docker Hub namespace
]

DIFFERENT = [
    ("nginx:1.25", "nginx:1.24"),
    ("nginx", "nginx:1.25"),  # latest is a tag like any other
    ("nginx:1.25", "ghcr.io/library/nginx:1.25"),
    ("docker.io/nginx", "docker.io/nginx/nginx"),
    ("registry:5000/app", "registry:5001/app"),
    ("registry/app", "docker.io/registry/app:v1"),
    ("localhost/app", "docker.io/library/app"),
    (f"nginx@{D}", f"nginx@{E}"),
    (f"nginx@{D}", "nginx:1.25"),
    (f"nginx@{D}", f"redis@{D}"),
    ("library/nginx", "nginx/library"),
]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_same_image(a: str, b: str) -> None:
    assert parse(a).match_key == parse(b).match_key


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_images(a: str, b: str) -> None:
    assert parse(a).match_key != parse(b).match_key


def test_parts() -> None:
    ref = parse(f"registry:5000/team/app:1.0@{D}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "registry:5000",
        "team/app",
        "1.0",
        D,
    )
    assert ref.tagged == "registry:5000/team/app:1.0"
    assert ref.pinned == f"registry:5000/team/app@{D}"
    assert parse(f"app@{D}").tag is None
    assert parse("app").pinned is None
