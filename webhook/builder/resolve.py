"""Resolve --image references to manifests: tag or digest, index -> chosen platforms."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from webhook.builder.core.build_plan import FetchedManifest, ResolvedImage
from webhook.builder.core.registry_endpoint import (
    manifest_path,
    registry_error_codes,
    registry_error_summary,
)
from webhook.builder.registry_client import RegistryClient
from webhook.core.build_errors import BuildFailure, Reason, format_bytes
from webhook.core.imageref import InvalidReference, parse
from webhook.core.ocilayout import split_digest
from webhook.core.registry_manifest import (
    MANIFEST_ACCEPT,
    Descriptor,
    InvalidManifest,
    Platform,
    parse_manifest,
    select_platforms,
)

log = logging.getLogger("imagecache.builder")

MAX_MANIFEST_BYTES = 4 << 20  # distribution refuses bigger manifests too


async def fetch_manifest(
    client: RegistryClient, registry: str, repository: str, reference: str, what: str
) -> tuple[bytes, str, str]:
    """(body, content type, digest) of a manifest; the digest is computed from the body and
    checked against the one asked for (a digest reference) or the registry's header."""
    resp = await client.request(
        "GET", registry, repository, manifest_path(repository, reference),
        headers={"Accept": MANIFEST_ACCEPT}, what=f"manifest of {what}",
    )
    async with resp:
        if resp.status == 404:
            body = await resp.read()
            codes = registry_error_codes(body)
            detail = registry_error_summary(body)
            hint = ("the repository does not exist" if "NAME_UNKNOWN" in codes
                    else "no such repository, tag or digest")
            raise BuildFailure(
                Reason.IMAGE_NOT_FOUND,
                f"image {what} not found in registry {registry}: {hint} ({detail})",
            )
        if resp.status != 200:
            body = await resp.read()
            raise BuildFailure(
                Reason.REGISTRY_ERROR,
                f"registry {registry} answered HTTP {resp.status} for the manifest of {what}: "
                f"{registry_error_summary(body)}",
            )
        length = resp.content_length
        if length is not None and length > MAX_MANIFEST_BYTES:
            raise BuildFailure(
                Reason.REGISTRY_ERROR,
                f"manifest of {what} is {format_bytes(length)}, over the "
                f"{format_bytes(MAX_MANIFEST_BYTES)} a manifest may have",
            )
        body = await resp.content.read(MAX_MANIFEST_BYTES + 1)
        if len(body) > MAX_MANIFEST_BYTES:
            raise BuildFailure(Reason.REGISTRY_ERROR, f"manifest of {what} is too large")
        content_type = resp.headers.get("Content-Type", "")
        header_digest = resp.headers.get("Docker-Content-Digest", "")
    expected = reference if ":" in reference and reference.startswith("sha") else header_digest
    algorithm = "sha256"
    if expected:
        try:
            algorithm, _ = split_digest(expected)
        except ValueError:
            expected, algorithm = "", "sha256"
    digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
    if expected and digest != expected:
        raise BuildFailure(
            Reason.DIGEST_MISMATCH,
            f"manifest of {what} from registry {registry} has digest {digest}, "
            f"expected {expected}",
        )
    return body, content_type, digest


async def resolve_image(
    client: RegistryClient, argument: str, platforms: Sequence[Platform]
) -> ResolvedImage:
    try:
        ref = parse(argument)
    except InvalidReference as exc:
        raise BuildFailure(Reason.INVALID_ARGUMENT, f"--image: {exc}") from None
    reference = str(ref)
    pin = ref.digest or ref.tag
    assert pin is not None
    body, content_type, digest = await fetch_manifest(
        client, ref.registry, ref.repository, pin, reference
    )
    try:
        doc = parse_manifest(body, content_type, reference)
    except InvalidManifest as exc:
        raise BuildFailure(Reason.REGISTRY_ERROR, str(exc)) from None
    top = FetchedManifest(Descriptor(doc.media_type, digest, len(body)), body, doc)
    if not doc.is_index:
        log.info("image %s: manifest %s (%s, single platform)", reference, digest,
                 format_bytes(len(body)))
        return ResolvedImage(argument, reference, top)
    try:
        chosen = select_platforms(doc, platforms, reference)
    except InvalidManifest as exc:
        raise BuildFailure(Reason.IMAGE_NOT_FOUND, str(exc)) from None
    children = []
    for platform, descriptor in chosen:
        what = f"{reference} ({platform})"
        child_body, child_type, child_digest = await fetch_manifest(
            client, ref.registry, ref.repository, descriptor.digest, what
        )
        if len(child_body) != descriptor.size:
            raise BuildFailure(
                Reason.DIGEST_MISMATCH,
                f"manifest of {what} is {len(child_body)} bytes, the index says "
                f"{descriptor.size}",
            )
        try:
            child = parse_manifest(child_body, child_type or descriptor.media_type, what)
        except InvalidManifest as exc:
            raise BuildFailure(Reason.REGISTRY_ERROR, str(exc)) from None
        if child.is_index:
            raise BuildFailure(
                Reason.REGISTRY_ERROR, f"{what}: an index nested in an index is not supported"
            )
        media_type = descriptor.media_type or child.media_type
        children.append(FetchedManifest(
            Descriptor(media_type, child_digest, len(child_body), platform), child_body, child
        ))
    log.info("image %s: index %s, platforms %s", reference, digest,
             ", ".join(str(p) for p, _ in chosen))
    return ResolvedImage(argument, reference, top, tuple(children))
