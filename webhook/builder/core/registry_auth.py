"""Registry authentication, the pure part: WWW-Authenticate challenges, token responses,
and which credentials of a dockerconfigjson pull secret apply to an image.

Credential matching follows the kubelet's credential keyring, so a secret that works for a
pod works for its cache: keys are scheme-less URLs (`host[:port][/path]`), a key's host may
use globs per dot-separated label (`*.example.com` matches `a.example.com`, not
`a.b.example.com`), ports must be equal, the key's path must prefix the repository path, and
more specific keys are tried first. `https://index.docker.io/v1/` and the other Docker Hub
spellings stand for docker.io.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from webhook.core.imageref import DOCKER_HUB

_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# Tokens live at least 60 s (the token spec's default); renew a little early.
DEFAULT_TOKEN_SECONDS = 60
TOKEN_RENEW_MARGIN = timedelta(seconds=10)


class InvalidDockerConfig(ValueError):
    """A pull secret file that cannot be used; the message names the file and entry."""


# ----------------------------------------------------------------- WWW-Authenticate


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercase: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*')
_SCHEME = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """All challenges in a WWW-Authenticate value (RFC 7235), params keyed lowercase."""
    challenges: list[Challenge] = []
    pos, text = 0, header or ""
    while pos < len(text):
        if text[pos] in ", \t":
            pos += 1
            continue
        scheme = _SCHEME.match(text, pos)
        if scheme is None:
            break
        # A token followed by '=' is a parameter of the previous challenge, not a scheme.
        if _PARAM.match(text, pos) and challenges:
            param = _PARAM.match(text, pos)
        else:
            current = Challenge(scheme.group(1).lower(), {})
            challenges.append(current)
            pos = scheme.end()
            param = _PARAM.match(text, pos)
        while param is not None:
            quoted = param.group(2)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else param.group(3)
            challenges[-1].params[param.group(1).lower()] = value
            pos = param.end()
            if pos < len(text) and text[pos] == ",":
                pos += 1
                param = _PARAM.match(text, pos)
            else:
                param = None
    return challenges


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: datetime

    def fresh(self, now: datetime) -> bool:
        return now + TOKEN_RENEW_MARGIN < self.expires_at


def parse_token_response(body: bytes, now: datetime, where: str) -> Token:
    """The token endpoint's JSON (`token` or OAuth2 `access_token`, `expires_in`)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise InvalidDockerConfig(f"token endpoint {where} answered with non-JSON") from None
    if not isinstance(doc, dict):
        raise InvalidDockerConfig(f"token endpoint {where} answered with non-object JSON")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise InvalidDockerConfig(f"token endpoint {where} answered without a token")
    expires_in = doc.get("expires_in")
    seconds = expires_in if isinstance(expires_in, int) and expires_in > 0 else 0
    return Token(value, now + timedelta(seconds=max(seconds, DEFAULT_TOKEN_SECONDS)))


# ----------------------------------------------------------------- pull secrets


@dataclass(frozen=True, slots=True)
class Credential:
    source: str  # the file it came from
    key: str  # the `auths` key as written
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token (`identitytoken`)

    @property
    def label(self) -> str:
        return f"{self.source} (auths[{self.key!r}])"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never print secrets in logs or tracebacks
        return f"Credential({self.label}, user={self.username!r})"


def _entry(source: str, key: str, value: Any) -> Credential:
    where = f"{source}: auths[{key!r}]"
    if not isinstance(value, dict):
        raise InvalidDockerConfig(f"{where} must be an object")
    username = value.get("username") or ""
    password = value.get("password") or ""
    identity = value.get("identitytoken") or ""
    auth = value.get("auth")
    if not all(isinstance(v, str) for v in (username, password, identity)):
        raise InvalidDockerConfig(f"{where}: username, password and identitytoken are strings")
    if auth:
        if not isinstance(auth, str):
            raise InvalidDockerConfig(f"{where}.auth must be a base64 string")
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidDockerConfig(
                f"{where}.auth is not base64 of 'user:password'"
            ) from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise InvalidDockerConfig(f"{where}.auth must decode to 'user:password'")
        username, password = username or user, password or secret
    if not (username or identity):
        raise InvalidDockerConfig(
            f"{where} has no credentials: set 'auth', 'username'/'password' or 'identitytoken'"
        )
    return Credential(source, key, str(username), str(password), str(identity))


def parse_docker_config(text: str | bytes, source: str) -> list[Credential]:
    """Credentials from a `.dockerconfigjson` file body; `source` names it in errors."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidDockerConfig(f"{source} is not JSON: {exc}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise InvalidDockerConfig(
            f"{source} has no 'auths' object; mount the '.dockerconfigjson' key of a "
            "kubernetes.io/dockerconfigjson secret"
        )
    return [_entry(source, key, value) for key, value in auths.items()]


@dataclass(frozen=True, slots=True)
class _Key:
    labels: tuple[str, ...]
    port: str
    path: str
    text: str


def _host_labels(host: str) -> tuple[tuple[str, ...], str]:
    name, port = host, ""
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        name, port = host[: end + 1], host[end + 2 :] if end + 1 < len(host) else ""
    elif host.count(":") == 1:
        name, port = host.split(":")
    name = name.lower()
    if name in _HUB_HOSTS:
        name = DOCKER_HUB
    return tuple(name.split(".")), port


def _key(key: str) -> _Key:
    text = key.strip()
    for prefix in ("https://", "http://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    host, _, path = text.partition("/")
    path = "/" + path if path else ""
    # docker treats /v1/ and /v2/ after the host as the host itself
    if path.startswith(("/v1/", "/v2/")) or path in ("/v1", "/v2"):
        path = path[3:]
    path = path.rstrip("/") if path != "/" else ""
    labels, port = _host_labels(host)
    return _Key(labels, port, path, ".".join(labels) + (f":{port}" if port else "") + path)


def _matches(key: _Key, registry: str, repository: str) -> bool:
    labels, port = _host_labels(registry)
    if key.port != port or len(key.labels) != len(labels):
        return False
    if not ("/" + repository).startswith(key.path):
        return False
    # Only '*' and '?' are wildcards; '[' starts an IPv6 literal, not a character class.
    pairs = zip(key.labels, labels, strict=True)
    return all(fnmatch.fnmatchcase(t, g.replace("[", "[[]")) for g, t in pairs)


def credentials_for(
    credentials: list[Credential], registry: str, repository: str
) -> list[Credential]:
    """The credentials that apply to `registry/repository`, most specific key first
    (the kubelet's order: keys sorted in reverse)."""
    keyed = [(_key(c.key), c) for c in credentials]
    keyed.sort(key=lambda kc: kc[0].text, reverse=True)
    return [c for k, c in keyed if _matches(k, registry, repository)]
