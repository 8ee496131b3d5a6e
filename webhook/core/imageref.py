"""Image references as a pod writes them, parsed and normalized.

Follows the grammar of distribution's reference package (what kubelet and containerd
accept): `[domain[:port]/]path[:tag][@digest]`. Normalization makes the spellings that pull
the same image compare equal: `nginx` = `docker.io/library/nginx:latest`, and
`index.docker.io` = `docker.io`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DEFAULT_TAG = "latest"
NAME_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = re.compile(rf"^{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256_HEX = re.compile(r"^[a-f0-9]{64}$")
_SHA512_HEX = re.compile(r"^[a-f0-9]{128}$")


class InvalidReference(ValueError):
    """A reference a registry would refuse; the message says what is wrong and how to fix it."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A normalized reference. `tag` is None only when a digest pins the image."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """`registry/repository`, the part that says where the image lives."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def tagged(self) -> str | None:
        """`name:tag`, or None for a reference pinned only by digest."""
        return None if self.tag is None else f"{self.name}:{self.tag}"

    @property
    def pinned(self) -> str | None:
        """`name@digest`, or None for a reference by tag only."""
        return None if self.digest is None else f"{self.name}@{self.digest}"

    @property
    def match_key(self) -> str:
        """What a cache must hold for this reference: a digest pins content, so it wins over
        a tag written beside it (containerd pulls `name:tag@digest` by digest)."""
        key = self.pinned or self.tagged
        assert key is not None  # parse() always sets a tag or a digest
        return key


def _split_domain(remainder: str) -> tuple[str, str]:
    first, sep, rest = remainder.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, rest
    return DOCKER_HUB, remainder


def _check_digest(reference: str, digest: str) -> None:
    if not _DIGEST.match(digest):
        raise InvalidReference(
            reference, f"digest {digest!r} is not of the form algorithm:hex (sha256:<64 hex>)"
        )
    algorithm, _, encoded = digest.partition(":")
    if algorithm == "sha256" and not _SHA256_HEX.match(encoded):
        raise InvalidReference(reference, "a sha256 digest has exactly 64 lowercase hex digits")
    if algorithm == "sha512" and not _SHA512_HEX.match(encoded):
        raise InvalidReference(reference, "a sha512 digest has exactly 128 lowercase hex digits")


@functools.lru_cache(maxsize=8192)
def parse(reference: str) -> ImageRef:
    """Parse and normalize `reference`, or raise InvalidReference saying why.

    Cached: pods of one workload repeat the same few references, and ImageRef is immutable.
    """
    if not isinstance(reference, str) or not reference:
        raise InvalidReference(str(reference), "the reference is empty")
    if reference != reference.strip() or any(c.isspace() for c in reference):
        raise InvalidReference(reference, "the reference contains white space")
    remainder, at, digest = reference.partition("@")
    if at:
        _check_digest(reference, digest)
    if not remainder:
        raise InvalidReference(reference, "the reference has no repository name")

    domain, path = _split_domain(remainder)
    tag: str | None = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(
                reference,
                f"tag {tag!r} must be 1-128 characters of letters, digits, '_', '.' or '-' "
                "and must not start with '.' or '-'",
            )
    if not path:
        raise InvalidReference(reference, "the reference has no repository name")
    if not _DOMAIN.match(domain):
        raise InvalidReference(reference, f"registry host {domain!r} is not a valid host[:port]")
    for component in path.split("/"):
        if not _PATH_COMPONENT.match(component):
            if _PATH_COMPONENT.match(component.lower()):
                raise InvalidReference(
                    reference, f"repository name must be lowercase (write {path.lower()!r})"
                )
            raise InvalidReference(
                reference,
                f"repository path component {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'",
            )
    # Host names are case-insensitive: REG.io and reg.io are one registry.
    domain = domain.lower()
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise InvalidReference(reference, f"repository name is longer than {NAME_MAX} characters")
    if tag is None and not at:
        tag = DEFAULT_TAG
    return ImageRef(registry=domain, repository=path, tag=tag, digest=digest if at else None)


def normalize(reference: str) -> str:
    """The canonical spelling of `reference` (raises InvalidReference)."""
    return str(parse(reference))
