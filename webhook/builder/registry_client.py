"""An OCI distribution client for pulling, on aiohttp: auth, TLS choices, retries, redirects.

One client serves a whole build. Auth state is kept per (registry, repository): a Bearer
token is fetched once per repository and reused until it expires; the credentials that
apply (pull secrets, kubelet matching) are tried in order, as the kubelet does.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from webhook.builder.core.registry_auth import (
    Challenge,
    Credential,
    InvalidDockerConfig,
    Token,
    credentials_for,
    parse_token_response,
    parse_www_authenticate,
    pull_scope,
)
from webhook.builder.core.registry_endpoint import api_host, is_insecure, registry_error_summary
from webhook.builder.core.registry_retry import RETRYABLE_STATUS, backoff_delay, parse_retry_after
from webhook.core.build_errors import BuildFailure, Reason

log = logging.getLogger("imagecache.builder")

MAX_REDIRECTS = 5
USER_AGENT = "imagecache-builder/0.1"
# Errors of the network, not of the registry's answer: worth another try.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    asyncio.TimeoutError,
    ConnectionError,
)


@dataclass
class _RepoAuth:
    candidates: list[Credential]
    position: int = 0  # which candidate is in use
    header: str | None = None
    token: Token | None = None
    challenge: Challenge | None = None
    from_credential: bool = False
    tried: list[str] = field(default_factory=list)

    @property
    def credential(self) -> Credential | None:
        return self.candidates[self.position] if self.position < len(self.candidates) else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        return backoff_delay(attempt, self.base_delay, self.max_delay, random.random(), retry_after)

    def next_delay(self, attempt: int, gave_up: str, reason: Reason = Reason.REGISTRY_UNREACHABLE
                   ) -> float:  # fmt: skip
        """The wait before retry `attempt` (1-based); past the last retry, a BuildFailure
        for `reason` saying `gave_up`."""
        if attempt > self.retries:
            raise BuildFailure(reason, gave_up) from None
        return self.delay(attempt)


class RegistryClient:
    def __init__(
        self,
        credentials: list[Credential],
        insecure: list[str],
        ca_file: Path | None,
        policy: RetryPolicy,
        connections: int = 16,
    ) -> None:
        self._credentials = credentials
        self._insecure = insecure
        self.policy = policy
        self._verified_tls = ssl.create_default_context()
        if ca_file is not None:
            try:
                self._verified_tls.load_verify_locations(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise BuildFailure(
                    Reason.INVALID_ARGUMENT,
                    f"--ca-file {ca_file}: cannot load a PEM CA bundle from it: {exc}",
                ) from None
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._schemes: dict[str, str] = {}
        self._scheme_locks: dict[str, asyncio.Lock] = {}
        self._auth: dict[tuple[str, str], _RepoAuth] = {}
        self._auth_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.credentials_used: set[str] = set()

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
            auto_decompress=False,  # digests are over the bytes as stored
            read_bufsize=1 << 20,
            headers={"User-Agent": USER_AGENT},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use RegistryClient in `async with`"
        return self._session

    # ------------------------------------------------------------------ transport

    def _ssl_for(self, registry: str) -> ssl.SSLContext | bool:
        return False if is_insecure(registry, self._insecure) else self._verified_tls

    async def _scheme(self, registry: str) -> str:
        """https, except for a listed insecure registry that does not speak TLS."""
        if registry in self._schemes:
            return self._schemes[registry]
        if not is_insecure(registry, self._insecure):
            self._schemes[registry] = "https"
            return "https"
        async with self._scheme_locks.setdefault(registry, asyncio.Lock()):
            if registry not in self._schemes:
                scheme = "https"
                try:
                    async with self.session.get(
                        f"https://{api_host(registry)}/v2/", ssl=False,
                        timeout=aiohttp.ClientTimeout(total=15),
                    ) as resp:
                        await resp.read()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    log.info("registry %s: no TLS (%s); using plain HTTP as it is listed "
                             "insecure", registry, type(exc).__name__)
                    scheme = "http"
                self._schemes[registry] = scheme
        return self._schemes[registry]

    async def _send(
        self, method: str, url: str, headers: dict[str, str], ssl_ctx: ssl.SSLContext | bool
    ) -> aiohttp.ClientResponse:
        """One request, following redirects by hand so that Authorization never goes to
        another origin (blob storage behind a registry gets a signed URL instead)."""
        origin = urlsplit(url)[:2]
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self.session.request(
                method, url, headers=headers, allow_redirects=False, ssl=ssl_ctx
            )
            if resp.status not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            location = urljoin(url, resp.headers["Location"])
            resp.release()
            url = location
            if urlsplit(url)[:2] != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            elsewhere = urlsplit(url)[:2] != origin
            if elsewhere and urlsplit(url).scheme == "https" and ssl_ctx is False:
                ssl_ctx = self._verified_tls  # insecure covers the registry, not a CDN
        raise aiohttp.TooManyRedirects(resp.request_info, resp.history)

    async def request(
        self,
        method: str,
        registry: str,
        repository: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        what: str = "",
    ) -> aiohttp.ClientResponse:
        """Send with auth, retrying network errors and 429/5xx with backoff. Returns the
        response (not read; the caller releases it). 401s are answered by authenticating."""
        host = api_host(registry)
        ssl_ctx = self._ssl_for(registry)
        auth_rounds = 0
        attempt = 0
        what = what or path
        while True:
            scheme = await self._scheme(registry)
            url = f"{scheme}://{host}{path}"
            state = await self._repo_auth(registry, repository)
            send_headers = dict(headers or {})
            if state.header:
                send_headers["Authorization"] = state.header
            try:
                resp = await self._send(method, url, send_headers, ssl_ctx)
            except aiohttp.ClientConnectorCertificateError as exc:
                raise BuildFailure(
                    Reason.REGISTRY_UNREACHABLE,
                    f"registry {registry}: TLS certificate not trusted ({exc.certificate_error}); "
                    "give its CA with --ca-file, or list it with --insecure-registry",
                ) from None
            except aiohttp.ClientSSLError as exc:
                raise BuildFailure(
                    Reason.REGISTRY_UNREACHABLE,
                    f"registry {registry}: TLS handshake failed ({_describe(exc)}); if it serves "
                    "plain HTTP, list it with --insecure-registry",
                ) from None
            except NETWORK_ERRORS as exc:
                attempt += 1
                delay = self.policy.next_delay(
                    attempt,
                    f"registry {registry} unreachable ({url}): {_describe(exc)}; gave up "
                    f"after {attempt} attempts",
                )
                log.warning("registry %s: %s for %s; retry %d/%d in %.1fs", registry,
                            _describe(exc), what, attempt, self.policy.retries, delay)
                await asyncio.sleep(delay)
                continue
            if resp.status in (401, 403) and resp.url.host == urlsplit(url).hostname:
                # (a 403 from blob storage after a redirect is not the registry's to answer)
                challenge_headers = resp.headers.getall("WWW-Authenticate", [])
                body = await resp.read()
                resp.release()
                auth_rounds += 1
                if auth_rounds > len(state.candidates) + 2:  # a registry that never accepts
                    raise self._unauthorized(registry, repository, state,
                                             f"HTTP {resp.status} after every credential")
                await self._authenticate(registry, repository, send_headers.get("Authorization"),
                                         resp.status, challenge_headers, body)
                continue
            if resp.status in RETRYABLE_STATUS and attempt < self.policy.retries:
                attempt += 1
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), datetime.now(UTC))
                delay = self.policy.delay(attempt, retry_after)
                log.warning("registry %s: HTTP %d for %s; retry %d/%d in %.1fs", registry,
                            resp.status, what, attempt, self.policy.retries, delay)
                resp.release()
                await asyncio.sleep(delay)
                continue
            if resp.status in RETRYABLE_STATUS:
                body = await resp.read()
                resp.release()
                raise BuildFailure(
                    Reason.REGISTRY_UNREACHABLE,
                    f"registry {registry} answered HTTP {resp.status} for {what} "
                    f"({registry_error_summary(body)}); gave up after {attempt + 1} attempts",
                )
            if resp.status < 300 and state.from_credential and state.credential is not None:
                self.credentials_used.add(state.credential.label)
            return resp

    # ------------------------------------------------------------------ auth

    async def _repo_auth(self, registry: str, repository: str) -> _RepoAuth:
        key = (registry, repository)
        state = self._auth.get(key)
        if state is None:
            state = _RepoAuth(credentials_for(self._credentials, registry, repository))
            self._auth[key] = state
        if state.token is not None and not state.token.fresh(datetime.now(UTC)):
            # Renew before it lapses so long downloads keep going.
            async with self._auth_locks.setdefault(key, asyncio.Lock()):
                if state.token is not None and not state.token.fresh(datetime.now(UTC)):
                    assert state.challenge is not None
                    await self._fetch_token(registry, repository, state, state.challenge)
        return state

    def _unauthorized(
        self, registry: str, repository: str, state: _RepoAuth, detail: str
    ) -> BuildFailure:
        if state.tried:
            secrets = "; tried " + ", ".join(state.tried)
        elif self._credentials:
            secrets = (f"; none of the {len(self._credentials)} pull secret entries matches "
                       f"{registry}/{repository}")
        else:
            secrets = "; no pull secret was given (imagePullSecrets)"
        return BuildFailure(
            Reason.UNAUTHORIZED,
            f"registry {registry} refused access to {repository}: {detail}{secrets}. Check the "
            "pull secret's credentials and that the repository exists",
        )

    async def _authenticate(
        self,
        registry: str,
        repository: str,
        sent: str | None,
        status: int,
        challenge_headers: list[str],
        body: bytes,
    ) -> None:
        """Answer a 401/403: first with the first matching credential (or anonymously),
        then, when what was sent is refused, with the next credential, until none is left."""
        key = (registry, repository)
        async with self._auth_locks.setdefault(key, asyncio.Lock()):
            state = self._auth[key]
            if sent is not None and state.header != sent:
                return  # another request of this repository authenticated meanwhile
            refused = f"HTTP {status} ({registry_error_summary(body)})"
            if sent is not None:
                if not state.from_credential:
                    raise self._unauthorized(registry, repository, state, refused)
                state.position += 1
                if state.credential is None:
                    raise self._unauthorized(registry, repository, state, refused)
            challenges = [c for h in challenge_headers for c in parse_www_authenticate(h)]
            bearer = next((c for c in challenges if c.scheme == "bearer"), None)
            if bearer is not None and "realm" in bearer.params:
                state.challenge = bearer
                await self._fetch_token(registry, repository, state, bearer)
                return
            credential = state.credential
            if credential is None or not credential.username:
                raise self._unauthorized(
                    registry, repository, state,
                    f"{refused}; it asks for a user name and password",
                )
            state.tried.append(credential.label)
            state.header = credential.basic()
            state.from_credential = True

    async def _fetch_token(
        self, registry: str, repository: str, state: _RepoAuth, challenge: Challenge
    ) -> None:
        realm = challenge.params["realm"]
        params = {"scope": pull_scope(repository)}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        credential = state.credential
        headers: dict[str, str] = {}
        if credential is not None and credential.label not in state.tried:
            state.tried.append(credential.label)
        attempt = 0
        while True:
            try:
                if credential is not None and credential.identity_token:
                    form = {**params, "grant_type": "refresh_token", "client_id": "imagecache",
                            "refresh_token": credential.identity_token}
                    resp = await self.session.post(realm, data=form, ssl=self._realm_ssl(realm))
                else:
                    if credential is not None:
                        headers["Authorization"] = credential.basic()
                    resp = await self.session.get(
                        f"{realm}{'&' if '?' in realm else '?'}{urlencode(params)}",
                        headers=headers, ssl=self._realm_ssl(realm),
                    )
                async with resp:
                    body = await resp.read()
                    status = resp.status
            except NETWORK_ERRORS as exc:
                attempt += 1
                gave_up = f"token service {realm} of registry {registry} unreachable: "
                await asyncio.sleep(self.policy.next_delay(attempt, gave_up + _describe(exc)))
                continue
            if status in RETRYABLE_STATUS and attempt < self.policy.retries:
                attempt += 1
                await asyncio.sleep(self.policy.delay(attempt))
                continue
            break
        if status in (401, 403):
            raise self._unauthorized(
                registry, repository, state,
                f"its token service {realm} answered HTTP {status} "
                f"({registry_error_summary(body)})",
            )
        if status != 200:
            raise BuildFailure(
                Reason.REGISTRY_ERROR,
                f"token service {realm} of registry {registry} answered HTTP {status}: "
                f"{registry_error_summary(body)}",
            )
        try:
            token = parse_token_response(body, datetime.now(UTC), realm)
        except InvalidDockerConfig as exc:
            raise BuildFailure(Reason.REGISTRY_ERROR, str(exc)) from None
        state.token = token
        state.header = f"Bearer {token.value}"
        state.from_credential = credential is not None

    def _realm_ssl(self, realm: str) -> ssl.SSLContext | bool:
        host = urlsplit(realm).netloc
        return False if is_insecure(host, self._insecure) else self._verified_tls


def _describe(exc: BaseException) -> str:
    """A one-line cause without aiohttp's object reprs."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        reason = getattr(cause, "reason", None) or getattr(cause, "strerror", None) or cause
        return f"cannot connect to {exc.host}:{exc.port}: {reason}"
    return str(exc) or type(exc).__name__
