"""`imagecache serve` as a process: graceful SIGTERM under load, a request in flight finishing
after the listener closed, and startup errors that say what to fix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from server_fixtures import (
    CACHES_YAML,
    Connection,
    client_context,
    generate_certs,
    read_response,
    request_bytes,
    require_reviews,
)

from webhook.server.command import main as serve_main

REPO = Path(__file__).resolve().parent.parent
SERVE = "import sys; from webhook.server.command import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Server:
    process: asyncio.subprocess.Process
    lines: list[dict[str, object]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    port: int = 0
    reader: asyncio.Task[None] | None = None

    def logged(self, msg: str) -> dict[str, object] | None:
        return next((line for line in self.lines if line.get("msg") == msg), None)


async def _collect(server: Server) -> None:
    assert server.process.stderr is not None
    async for raw in server.process.stderr:
        text = raw.decode(errors="replace").rstrip("\n")
        server.text.append(text)
        with contextlib.suppress(ValueError):
            server.lines.append(json.loads(text))


async def _until(server: Server, msg: str, within: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + within
    while (line := server.logged(msg)) is None:
        if time.monotonic() > deadline or server.process.returncode is not None:
            raise AssertionError(f"no {msg!r} log line; stderr:\n" + "\n".join(server.text))
        await asyncio.sleep(0.02)
    return line


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def start(cert_dir: Path) -> AsyncIterator[object]:
    started: list[tuple[Server, asyncio.Task[None]]] = []

    async def run(*extra: str) -> Server:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVE,
            "--tls-cert", str(cert_dir / "tls.crt"), "--tls-key", str(cert_dir / "tls.key"),
            "--listen", "127.0.0.1:0", *extra,
            cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        server = Server(process)
        server.reader = asyncio.create_task(_collect(server))
        started.append((server, server.reader))
        return server

    yield run
    for server, reader in started:
        if server.process.returncode is None:
            server.process.kill()
        await server.process.wait()
        await reader


async def _listening(server: Server) -> int:
    line = await _until(server, "listening")
    addresses = line["addresses"]
    assert isinstance(addresses, list)
    return int(str(addresses[0]).rsplit(":", 1)[1])


def _log_time(line: dict[str, object]) -> float:
    return datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00")).timestamp()


async def test_request_in_flight_finishes_after_the_listener_closed(
    start: object, cert_dir: Path
) -> None:
    server: Server = await start("--caches", "default", "--shutdown-timeout", "5")  # type: ignore[operator]
    port = await _listening(server)
    review = require_reviews()[0]
    body = review.read_bytes()
    uid = json.loads(body)["request"]["uid"]
    context = client_context(cert_dir / "ca.crt")
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    request = request_bytes("POST", "/mutate", body)
    half = len(request) - len(body) // 2
    writer.write(request[:half])  # headers and half the body: the handler is running
    await writer.drain()
    await asyncio.sleep(0.2)

    server.process.send_signal(signal.SIGTERM)
    await _until(server, "stopping: no new connections, finishing requests")
    await asyncio.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):  # the listener is closed...
        await asyncio.open_connection("127.0.0.1", port)
    assert server.process.returncode is None  # ...and the process waits for us

    writer.write(request[half:])
    await writer.drain()
    status, _, answer = await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert status == 200
    assert json.loads(answer)["response"]["uid"] == uid
    assert await asyncio.wait_for(server.process.wait(), 10) == 0
    assert server.logged("stopped") is not None
    assert server.reader is not None
    await asyncio.wait_for(server.reader, 5)  # stderr read to its end
    assert len(server.lines) == len(server.text), "every stderr line is a JSON object"


@dataclass
class Outcome:
    ok: bool
    at: float  # wall clock, comparable with the server's log times
    error: str = ""


async def test_sigterm_under_load_fails_nothing_before_the_listener_closes(
    start: object, cert_dir: Path
) -> None:
    server: Server = await start(  # type: ignore[operator]
        "--caches", "default", "--shutdown-delay", "0.8", "--shutdown-timeout", "5"
    )
    port = await _listening(server)
    body = require_reviews()[0].read_bytes()
    context = client_context(cert_dir / "ca.crt")
    outcomes: list[Outcome] = []
    ready_codes: list[tuple[float, int]] = []

    async def client() -> None:
        while True:
            try:
                connection = await Connection.open(port, context)
                try:
                    status, _ = await connection.request("POST", "/mutate", body, close=True)
                finally:
                    connection.close()
                outcomes.append(Outcome(status == 200, time.time(), f"HTTP {status}"))
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                outcomes.append(Outcome(False, time.time(), f"{type(exc).__name__}: {exc}"))
                if isinstance(exc, ConnectionRefusedError):
                    return

    async def readiness() -> None:
        while True:
            try:
                connection = await Connection.open(port, context)
                status, _ = await connection.request("GET", "/readyz", close=True)
                connection.close()
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                return
            ready_codes.append((time.time(), status))
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(client()) for _ in range(4)]
    probe = asyncio.create_task(readiness())
    await asyncio.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.time()
    await asyncio.wait_for(asyncio.gather(*tasks, probe), 20)
    assert await asyncio.wait_for(server.process.wait(), 10) == 0

    closed = _log_time(await _until(server, "stopping: no new connections, finishing requests"))
    early = [o for o in outcomes if not o.ok and o.at < closed]
    assert early == [], early[:5]
    assert sum(o.ok and o.at < signalled for o in outcomes) > 0
    # Through --shutdown-delay the webhook kept answering, and said it was not ready.
    assert sum(o.ok and signalled < o.at < closed for o in outcomes) > 0
    assert any(code == 503 and signalled < at < closed for at, code in ready_codes)
    assert all(code == 200 for at, code in ready_codes if at < signalled)
    assert all(o.ok for o in outcomes if o.at < closed)


# --- startup errors -------------------------------------------------------------------------


async def _run_to_exit(start: object, *extra: str) -> tuple[int, str]:
    server: Server = await start(*extra)  # type: ignore[operator]
    code = await asyncio.wait_for(server.process.wait(), 20)
    assert server.reader is not None
    await asyncio.wait_for(server.reader, 5)
    return code, "\n".join(server.text)


async def test_mismatched_key_at_start(start: object, tmp_path: Path, cert_dir: Path) -> None:
    other = generate_certs(tmp_path / "other")
    code, err = await _run_to_exit(
        start, "--caches", "default", "--tls-key", str(other / "tls.key")
    )
    assert code == 1
    assert "does not match the certificate" in err and "check --tls-cert and --tls-key" in err
    assert "Traceback" not in err


async def test_missing_certificate_at_start(start: object, tmp_path: Path) -> None:
    code, err = await _run_to_exit(
        start, "--caches", "default", "--tls-cert", str(tmp_path / "nope.crt")
    )
    assert code == 1
    assert f"cannot read {tmp_path / 'nope.crt'}" in err
    assert "Traceback" not in err


async def test_bad_caches_file_at_start(start: object, tmp_path: Path) -> None:
    caches = tmp_path / "caches.yaml"
    caches.write_text(CACHES_YAML + "---\nkind: ConfigMap\nmetadata: {name: x}\n")
    code, err = await _run_to_exit(start, "--caches", str(caches))
    assert code == 1
    assert f"--caches {caches}: expected kind ImageCache, found 'ConfigMap'" in err
    assert "Traceback" not in err


async def test_port_in_use_at_start(start: object) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await _run_to_exit(
            start, "--caches", "default", "--listen", f"127.0.0.1:{port}"
        )
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "choose another --listen" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--listen", "8443", "is not HOST:PORT"),
        ("--listen", "[nope]:1", "is not an IPv6 address"),
        ("--shutdown-timeout", "-1", "is not a number of seconds"),
        ("--log-level", "loud", "invalid choice"),
    ],
)
def test_bad_flags(
    capsys: pytest.CaptureFixture[str], cert_dir: Path, flag: str, value: str, message: str
) -> None:
    # Refused by the parser, before anything starts: safe to run in this process.
    argv = ["--tls-cert", str(cert_dir / "tls.crt"), "--tls-key", str(cert_dir / "tls.key")]
    assert serve_main([*argv, "--caches", "default", flag, value]) == 2
    assert message in capsys.readouterr().err


def test_kubeconfig_error_is_clear(tmp_path: Path, cert_dir: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }
    result = subprocess.run(
        [sys.executable, "-c", SERVE, "--tls-cert", str(cert_dir / "tls.crt"),
         "--tls-key", str(cert_dir / "tls.key"), "--listen", "127.0.0.1:0",
         "--kubeconfig", str(tmp_path / "missing")],
        cwd=REPO, capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot configure the Kubernetes client (--kubeconfig" in result.stderr
    assert "Traceback" not in result.stderr
