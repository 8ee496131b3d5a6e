"""Authentication against real registries: docker-registry with TLS and htpasswd (Basic),
and with distribution token auth (Bearer, tokens from a test token server whose signing
certificate the registry trusts). Credentials come from .dockerconfigjson files."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from builder_proxy import RegistryProxy
from registry_fixture import (
    Image,
    Registry,
    TokenServer,
    docker_config,
    image,
    layer,
    make_tls,
    needs,
    run_builder,
)

from webhook.core.build_result import BuildError, BuildResult
from webhook.core.cachedisk import MANIFEST_FILE, parse_manifest

pytestmark = [pytest.mark.registry, needs("docker-registry")]

USER, PASSWORD = "puller", "s3cret-pw"


@dataclass
class Secured:
    registry: Registry
    private: Image
    ca: Path


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("basic")
    tls = make_tls(directory / "tls")
    with Registry(directory, tls=tls, users={USER: PASSWORD}) as registry:
        private = image([layer(21, 150_000), layer(22, 60_000)])
        registry.client(USER, PASSWORD).push_image("team/private", "1", private)
        yield Secured(registry, private, tls.ca_cert)


def run(tmp_path: Path, images: list[str], *extra: str) -> tuple[int, BuildResult | BuildError,
                                                                 Path]:
    out = tmp_path / "disk"
    out.mkdir(exist_ok=True)
    code, result = run_builder(out, tmp_path / "termination", images, *extra, name="private-cache")
    return code, result, out


@pytest.mark.parametrize(
    "key",
    ["{host}", "https://{host}", "https://{host}/v2/", "{host}/team", "127.0.0.*:{port}"],
)
def test_basic_auth_with_pull_secret(basic: Secured, tmp_path: Path, key: str) -> None:
    host, port = basic.registry.host, basic.registry.port
    secret = docker_config(tmp_path / "config.json",
                           {key.format(host=host, port=port): (USER, PASSWORD)})
    ref = f"{host}/team/private:1"
    code, result, out = run(tmp_path, [ref], "--pull-secret-file", str(secret),
                            "--ca-file", str(basic.ca))
    assert code == 0, result
    assert isinstance(result, BuildResult) and result.images[0].digest == basic.private.digest
    manifest = parse_manifest((out / MANIFEST_FILE).read_text())
    assert manifest.built_with_credentials and not manifest.serve_credentialed
    assert not manifest.mirror_may_serve  # private content stays off the node mirror


def test_serve_credentialed_and_insecure_tls(basic: Secured, tmp_path: Path) -> None:
    host = basic.registry.host
    secret = docker_config(tmp_path / "config.json", {host: (USER, PASSWORD)})
    code, result, out = run(tmp_path, [f"{host}/team/private:1"], "--pull-secret-file",
                            str(secret), "--insecure-registry", host, "--serve-credentialed")
    assert code == 0, result
    manifest = parse_manifest((out / MANIFEST_FILE).read_text())
    assert manifest.built_with_credentials and manifest.mirror_may_serve


def test_next_credential_when_the_first_is_refused(basic: Secured, tmp_path: Path) -> None:
    host = basic.registry.host
    wrong = docker_config(tmp_path / "wrong.json", {f"{host}/team": (USER, "wrong")})
    right = docker_config(tmp_path / "right.json", {host: (USER, PASSWORD)})
    code, result, _ = run(tmp_path, [f"{host}/team/private:1"], "--pull-secret-file", str(wrong),
                          "--pull-secret-file", str(right), "--ca-file", str(basic.ca))
    assert code == 0, result


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"{host}": (USER, "wrong")}, r"refused access to team/private.*tried .*wrong.json"),
        ({}, "no pull secret was given"),
        ({"other.example.com": (USER, PASSWORD)}, "none of the 1 pull secret entries matches"),
    ],
)
def test_basic_auth_refused(basic: Secured, tmp_path: Path, entries: dict[str, tuple[str, str]],
                            message: str) -> None:
    host = basic.registry.host
    extra: list[str] = ["--ca-file", str(basic.ca)]
    if entries:
        secret = docker_config(tmp_path / "wrong.json",
                               {k.format(host=host): v for k, v in entries.items()})
        extra += ["--pull-secret-file", str(secret)]
    code, result, out = run(tmp_path, [f"{host}/team/private:1"], *extra)
    assert code == 11
    assert isinstance(result, BuildError) and result.reason == "Unauthorized"
    assert f"registry {host}" in result.message
    assert re.search(message, result.message), result.message
    assert PASSWORD not in result.message and "wrong\"" not in result.message
    assert not (out / MANIFEST_FILE).exists()


def test_authorization_never_follows_a_redirect_elsewhere(tmp_path: Path) -> None:
    """Registries redirect blob GETs to storage; the credentials stay with the registry."""
    with (Registry(tmp_path / "registry") as registry,
          RegistryProxy(registry.url) as storage,
          RegistryProxy(registry.url) as front):
        img = image([layer(51, 40_000), layer(52, 30_000)])
        registry.client().push_image("team/redirected", "1", img)
        secret = docker_config(tmp_path / "config.json", {front.host: (USER, PASSWORD)})
        front.require_auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        # another origin: same address, but spelled as a different host
        front.redirect_blobs_to = f"http://localhost:{storage.port}"
        code, result, out = run(tmp_path, [f"{front.host}/team/redirected:1"],
                                "--pull-secret-file", str(secret),
                                "--insecure-registry", front.host)
        assert code == 0, result
        assert front.blob_auth and all(a == front.require_auth for a in front.blob_auth)
        assert len(storage.blob_auth) == 3 and storage.blob_auth == [None] * 3
        assert parse_manifest((out / MANIFEST_FILE).read_text()).built_with_credentials


def test_untrusted_certificate_names_the_fix(basic: Secured, tmp_path: Path) -> None:
    code, result, _ = run(tmp_path, [f"{basic.registry.host}/team/private:1"])
    assert code == 14
    assert isinstance(result, BuildError) and "--ca-file" in result.message


# ------------------------------------------------------------------ token auth


@dataclass
class Tokened:
    registry: Registry
    tokens: TokenServer
    one: Image
    two: Image


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tokened]:
    directory = tmp_path_factory.mktemp("token")
    tokens = TokenServer(directory / "tokens", users={USER: PASSWORD}).start()
    try:
        with Registry(directory / "registry", token=tokens) as registry:
            one = image([layer(31, 80_000), layer(32, 90_000), layer(33, 10_000)])
            two = image([layer(34, 70_000)])
            pusher = registry.client(USER, PASSWORD)
            pusher.push_image("org/one", "1", one)
            pusher.push_image("org/two", "1", two)
            yield Tokened(registry, tokens, one, two)
    finally:
        tokens.stop()


def test_token_auth_with_identity_token(tokened: Tokened, tmp_path: Path) -> None:
    host = tokened.registry.host
    tokened.tokens.refresh_tokens["refresh-abc"] = USER
    secret = tmp_path / "config.json"
    secret.write_text(json.dumps({"auths": {host: {"identitytoken": "refresh-abc"}}}))
    tokened.tokens.requests.clear()
    code, result, _ = run(tmp_path, [f"{host}/org/two:1"], "--pull-secret-file", str(secret),
                          "--insecure-registry", host)
    assert code == 0, result
    assert tokened.tokens.requests == [
        {"scope": "repository:org/two:pull", "user": USER, "result": "issued"}]


def test_token_auth_one_token_per_repository(tokened: Tokened, tmp_path: Path) -> None:
    host = tokened.registry.host
    secret = docker_config(tmp_path / "config.json", {host: (USER, PASSWORD)})
    tokened.tokens.requests.clear()
    code, result, out = run(tmp_path, [f"{host}/org/one:1", f"{host}/org/two:1"],
                            "--pull-secret-file", str(secret), "--insecure-registry", host)
    assert code == 0, result
    assert isinstance(result, BuildResult)
    assert [i.digest for i in result.images] == [tokened.one.digest, tokened.two.digest]
    # 4 + 2 requests to each repository's blobs and manifests, one token each
    issued = sorted(r["scope"] for r in tokened.tokens.requests if r["result"] == "issued")
    assert issued == ["repository:org/one:pull", "repository:org/two:pull"]
    assert all(r["user"] == USER for r in tokened.tokens.requests)
    assert parse_manifest((out / MANIFEST_FILE).read_text()).built_with_credentials


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"{host}": (USER, "nope")},
         r"token service http://127\.0\.0\.1:\d+/token answered HTTP 401"),
        ({}, r"no pull secret was given"),
    ],
)
def test_token_auth_refused(tokened: Tokened, tmp_path: Path,
                            entries: dict[str, tuple[str, str]], message: str) -> None:
    host = tokened.registry.host
    extra = ["--insecure-registry", host]
    if entries:
        secret = docker_config(tmp_path / "config.json",
                               {k.format(host=host): v for k, v in entries.items()})
        extra += ["--pull-secret-file", str(secret)]
    code, result, _ = run(tmp_path, [f"{host}/org/one:1"], *extra)
    assert code == 11
    assert isinstance(result, BuildError) and result.reason == "Unauthorized"
    assert re.search(message, result.message), result.message


def test_secret_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"auths": {"r.io": {"auth": "!!"}}}))
    code, result, _ = run(tmp_path, ["r.io/x:1"], "--pull-secret-file", str(bad))
    assert code == 2
    assert isinstance(result, BuildError) and str(bad) in result.message
    assert "not base64" in result.message
