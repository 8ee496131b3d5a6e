"""The real webhook server over TLS on 127.0.0.1: recorded AdmissionReviews, bad bodies,
TLS versions, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from server_fixtures import (
    CACHES_YAML,
    client_context,
    generate_certs,
    options,
    post_json,
    read_response,
    require_reviews,
    running,
    url,
    wait_for,
)

from webhook.logs import JsonFormatter, log
from webhook.server.core.review import MAX_BODY_BYTES
from webhook.server.runtime import Webhook


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def caches_file(tmp_path: Path) -> Path:
    path = tmp_path / "caches.yaml"
    path.write_text(CACHES_YAML)
    return path


@pytest.fixture
async def webhook(cert_dir: Path, caches_file: Path) -> AsyncIterator[Webhook]:
    opts = options(cert_dir / "tls.crt", cert_dir / "tls.key", caches=str(caches_file))
    async with running(opts) as server:
        yield server


@pytest.fixture
async def session(cert_dir: Path) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(cert_dir / "ca.crt"))
    async with aiohttp.ClientSession(connector=connector) as client:
        yield client


def _patch(answer: dict[str, object]) -> list[dict[str, object]]:
    response = answer["response"]
    assert isinstance(response, dict)
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    ops: list[dict[str, object]] = json.loads(base64.b64decode(str(response["patch"])))
    return ops


def _decision(ops: list[dict[str, object]]) -> str | None:
    for op in ops:
        value = op["value"]
        if op["path"] == "/metadata/annotations/imagecache.dev~1decision":
            return str(value)
        if op["path"] == "/metadata/annotations" and isinstance(value, dict):
            return value.get("imagecache.dev/decision")
    return None


# Expected per recorded review and path: (decision written, cache volume added).
EXPECTED = {
    ("pod-create-by-replicaset.json", "/mutate"): (None, False),  # no opt-in annotation
    ("pod-create-by-replicaset.json", "/mutate/auto"): ("miss", False),  # namespace default
    ("pod-create-dryrun.json", "/mutate"): ("hit", True),
    ("pod-create-dryrun.json", "/mutate/auto"): ("hit", True),
    ("pod-create-generatename.json", "/mutate"): ("hit", True),
    ("pod-create-generatename.json", "/mutate/auto"): ("hit", True),
}


@pytest.mark.parametrize("path", ["/mutate", "/mutate/auto"])
async def test_recorded_reviews_are_answered(
    webhook: Webhook, session: aiohttp.ClientSession, path: str
) -> None:
    for review_file in require_reviews():
        request = json.loads(review_file.read_bytes())
        status, answer = await post_json(session, url(webhook, path), review_file.read_bytes())
        assert status == 200, answer
        assert answer["apiVersion"] == request["apiVersion"]
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == request["request"]["uid"]
        assert answer["response"]["allowed"] is True
        ops = _patch(answer)
        decision, volume = EXPECTED.get((review_file.name, path), (None, False))
        assert _decision(ops) == decision, (review_file.name, ops)
        added = [op for op in ops if op["path"].startswith("/spec/volumes")]  # type: ignore[union-attr]
        assert bool(added) == volume, (review_file.name, ops)


async def test_content_type_is_checked_leniently(
    webhook: Webhook, session: aiohttp.ClientSession
) -> None:
    body = require_reviews()[0].read_bytes()
    for content_type in ("application/json; charset=utf-8", "APPLICATION/JSON", ""):
        async with session.post(
            url(webhook, "/mutate"), data=body, headers={"Content-Type": content_type}
        ) as response:
            assert response.status == 200, content_type
    async with session.post(
        url(webhook, "/mutate"), data=body, headers={"Content-Type": "text/plain"}
    ) as response:
        assert response.status == 415
        assert "Content-Type must be application/json" in (await response.json())["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "request body is not JSON"),
        (b"", "request body is not JSON"),
        (b"[1, 2]", "must be an object"),
        (b'{"kind": "Pod"}', "kind must be AdmissionReview"),
        (
            json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}).encode(),
            "request is missing",
        ),
        (b"\xff\xfe\x00garbage", "request body is not JSON"),
        (b"[" * 100_000, "request body is not JSON"),
    ],
    ids=["text", "empty", "array", "wrong-kind", "no-request", "binary", "deep-nesting"],
)
async def test_bad_bodies_get_400_json(
    webhook: Webhook, session: aiohttp.ClientSession, body: bytes, message: str
) -> None:
    status, answer = await post_json(session, url(webhook, "/mutate"), body)
    assert status == 400
    assert message in answer["error"]


async def _raw_request(
    webhook: Webhook, cafile: Path, head: bytes, body_chunks: list[bytes]
) -> tuple[int, dict[str, str]]:
    """Send a request over TLS by hand (headers, then body pieces while reading the answer)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", webhook.port, ssl=client_context(cafile), server_hostname="localhost"
    )

    async def send() -> None:
        try:
            for chunk in body_chunks:
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass  # the server may stop reading once it has answered

    writer.write(head)
    sender = asyncio.create_task(send())
    try:
        status, headers, body = await asyncio.wait_for(read_response(reader), 10)
        assert headers["content-type"].startswith("application/json"), headers
        return status, json.loads(body)
    finally:
        sender.cancel()
        writer.close()


async def test_body_over_the_limit_refused_before_reading(webhook: Webhook, cert_dir: Path) -> None:
    head = (
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\n"
        b"Content-Length: " + str(MAX_BODY_BYTES + 1).encode() + b"\r\n\r\n"
    )
    # Only 1 KiB of the announced body is ever sent: the answer must not wait for the rest.
    status, answer = await _raw_request(webhook, cert_dir / "ca.crt", head, [b"{" * 1024])
    assert status == 413
    assert f"over the limit of {MAX_BODY_BYTES} bytes" in answer["error"]


async def test_chunked_body_over_the_limit_refused(webhook: Webhook, cert_dir: Path) -> None:
    head = (
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b" " * 65536
    chunk = hex(len(piece))[2:].encode() + b"\r\n" + piece + b"\r\n"
    chunks = [chunk] * (MAX_BODY_BYTES // len(piece) + 4) + [b"0\r\n\r\n"]
    status, answer = await _raw_request(webhook, cert_dir / "ca.crt", head, chunks)
    assert status == 413
    assert f"over the limit of {MAX_BODY_BYTES} bytes" in answer["error"]


async def test_other_methods_and_paths_are_not_500(
    webhook: Webhook, session: aiohttp.ClientSession
) -> None:
    async with session.get(url(webhook, "/mutate")) as response:
        assert response.status == 405
    async with session.post(url(webhook, "/validate"), data=b"{}") as response:
        assert response.status == 404


async def test_health_readiness_and_metrics(
    webhook: Webhook, session: aiohttp.ClientSession
) -> None:
    async with session.get(url(webhook, "/healthz")) as response:
        assert response.status == 200
    async with session.get(url(webhook, "/readyz")) as response:
        assert response.status == 200
        assert await response.text() == "ok: 2 caches\n"
    reviews = require_reviews()
    for review_file in reviews:
        await post_json(session, url(webhook, "/mutate/auto"), review_file.read_bytes())
    await post_json(session, url(webhook, "/mutate"), b"nope")
    async with session.get(url(webhook, "/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    decisions = [EXPECTED.get((r.name, "/mutate/auto"), (None, False))[0] for r in reviews]
    assert samples['imagecache_admission_requests_total{result="patched"}'] == len(reviews)
    assert samples['imagecache_admission_requests_total{result="invalid"}'] == 1
    assert samples['imagecache_admission_requests_total{result="error"}'] == 0
    assert samples['imagecache_admission_decisions_total{decision="hit"}'] == decisions.count("hit")
    assert samples['imagecache_admission_decisions_total{decision="miss"}'] == decisions.count(
        "miss"
    )
    assert samples["imagecache_admission_duration_seconds_count"] == len(reviews) + 1
    assert 'imagecache_admission_duration_seconds_bucket{le="0.0005"}' in samples
    assert samples["imagecache_cache_index_size"] == 2
    assert samples["imagecache_cache_index_resyncs_total"] == 1
    assert samples['imagecache_tls_reloads_total{result="success"}'] == 0


async def test_guard_turns_a_handler_failure_into_400_json(
    webhook: Webhook, session: aiohttp.ClientSession
) -> None:
    class Broken:
        def __len__(self) -> int:
            return 0

        def __getattr__(self, name: str) -> object:
            raise RuntimeError("index exploded")

    webhook.state.index = Broken()  # type: ignore[assignment]
    body = require_reviews()[0].read_bytes()
    status, answer = await post_json(session, url(webhook, "/mutate/auto"), body)
    assert status == 400, answer
    assert "could not handle this request" in answer["error"]


# --- TLS versions ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_12_and_13_accepted(
    webhook: Webhook, cert_dir: Path, version: ssl.TLSVersion
) -> None:
    context = client_context(cert_dir / "ca.crt")
    context.minimum_version = context.maximum_version = version
    _, writer = await asyncio.open_connection("127.0.0.1", webhook.port, ssl=context)
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    writer.close()


def _tls11_client(cafile: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(cafile))
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 above level 0
    return context


@pytest.fixture
def tls11_server(cert_dir: Path) -> Iterator[int]:
    """A plain server that does allow TLS 1.1: proof that the client below can speak it."""
    import socket

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port: int = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()
    thread.join(5)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_11_refused(webhook: Webhook, cert_dir: Path, tls11_server: int) -> None:
    client = _tls11_client(cert_dir / "ca.crt")
    try:  # the same client, against a server that allows TLS 1.1
        _, writer = await asyncio.open_connection("127.0.0.1", tls11_server, ssl=client)
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all, nothing to refuse: {exc}")
    assert writer.get_extra_info("ssl_object").version() in ("TLSv1", "TLSv1.1")
    writer.close()
    # The server refuses in the handshake: an alert (SSLError) or, when asyncio aborts the
    # connection before the alert is flushed, a reset. Never a connection.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", webhook.port, ssl=client)


# --- readiness follows the cache source -----------------------------------------------------


async def test_readyz_503_until_the_index_is_synced(
    tmp_path: Path, cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on: the apiserver is "down"
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{dead}",
                                                        "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )  # fmt: skip
    opts = options(cert_dir / "tls.crt", cert_dir / "tls.key", kubeconfig=str(kubeconfig))
    connector = aiohttp.TCPConnector(ssl=client_context(cert_dir / "ca.crt"))
    async with running(opts) as server, aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):  # stays unready while the LIST keeps failing (backoff 0.1-0.5 s)
            async with session.get(url(server, "/readyz")) as response:
                assert response.status == 503
                assert "not synced" in await response.text()
            await asyncio.sleep(0.3)
        async with session.get(url(server, "/healthz")) as response:
            assert response.status == 200  # alive all the same
        retries = [r.fields for r in caplog.records if r.getMessage() == "watch failed, retrying"]  # type: ignore[attr-defined]
        assert [f["attempt"] for f in retries[:3]] == [1, 2, 3]  # backing off, not giving up
        assert all(0.05 <= f["retry_in_s"] <= 0.5 for f in retries)
        # What the first successful LIST does:
        server.replace(list(yaml.safe_load_all(CACHES_YAML)))
        await wait_for(lambda: server.state.synced, what="synced")
        async with session.get(url(server, "/readyz")) as response:
            assert response.status == 200
        server.state.stopping = True
        async with session.get(url(server, "/readyz")) as response:
            assert response.status == 503


# --- structured logs ------------------------------------------------------------------------


async def test_pods_left_without_a_cache_logged_at_info_hits_and_others_at_debug(
    webhook: Webhook, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="imagecache.webhook.test")
    by_name = {r.name: r for r in require_reviews()}
    opted_in = by_name.get("pod-create-generatename.json")
    plain = by_name.get("pod-create-by-replicaset.json")
    if opted_in is None or plain is None:
        pytest.skip(f"the recorded reviews changed: {sorted(by_name)}")
    missed = json.loads(opted_in.read_bytes())
    missed["request"]["uid"] = "uid-of-a-miss"
    for container in missed["request"]["object"]["spec"]["containers"]:
        container["image"] = "registry.example.test/nobody/caches-this:1"
    await post_json(session, url(webhook, "/mutate"), opted_in.read_bytes())
    await post_json(session, url(webhook, "/mutate"), json.dumps(missed).encode())
    await post_json(session, url(webhook, "/mutate"), plain.read_bytes())
    admissions = [r for r in caplog.records if r.getMessage() == "admission"]
    assert [r.levelno for r in admissions] == [logging.DEBUG, logging.INFO, logging.DEBUG]
    hit, miss, ignored = (r.fields for r in admissions)  # type: ignore[attr-defined]
    request = json.loads(opted_in.read_bytes())["request"]
    assert hit["uid"] == request["uid"]
    assert hit["namespace"] == request["namespace"]
    assert hit["pod"] == request["object"]["metadata"]["generateName"]
    assert hit["decision"] == "hit" and hit["cache"] == "nginx"
    assert 0 < hit["duration_ms"] < 1000
    assert miss["uid"] == "uid-of-a-miss" and miss["decision"] == "miss"
    assert miss["reason"] == "no usable ImageCache holds every one of the pod's images"
    assert ignored["outcome"] == "ignored"


def test_json_formatter_writes_one_object_per_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("imagecache.webhook.format-test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        log(logger, logging.INFO, "admission", uid="u1", note="two\nlines", path=Path("/x"))
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "admission" and first["level"] == "info"
    assert first["uid"] == "u1" and first["note"] == "two\nlines" and first["path"] == "/x"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]
