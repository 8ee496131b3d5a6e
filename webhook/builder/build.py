"""A whole build: resolve every image, check space, download, then write the layout and,
last, imagecache.json. Nothing is presented as complete before that last rename."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from webhook.builder.blobstore import BlobStore
from webhook.builder.core.build_plan import ResolvedImage, plan_build
from webhook.builder.core.registry_auth import Credential
from webhook.builder.download import fetch_blob
from webhook.builder.layers import drop_layers, unpack_images
from webhook.builder.registry_client import RegistryClient, RetryPolicy
from webhook.builder.resolve import resolve_image
from webhook.core.build_errors import BuildFailure, Reason, format_bytes
from webhook.core.cachedisk import CachedImage, CacheManifest
from webhook.core.imageref import parse
from webhook.core.layer_chain import estimated_unpacked
from webhook.core.ocilayout import IndexEntry, index_file_body
from webhook.core.registry_manifest import Descriptor, Platform, config_platform

log = logging.getLogger("imagecache.builder")


@dataclass(frozen=True)
class BuildOptions:
    name: str
    images: Sequence[str]
    output: Path
    platforms: Sequence[Platform]
    credentials: Sequence[Credential] = ()
    insecure: Sequence[str] = ()
    ca_file: Path | None = None
    concurrency: int = 4
    serve_credentialed: bool = False
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    resolve_only: bool = False  # manifests only: sizes for auto-sizing, nothing written
    layers: bool = False  # unpack every layer under /layers/ for the node snapshotter


@dataclass(frozen=True)
class BuildSummary:
    images: tuple[ResolvedImage, ...]  # one per --image argument, in order
    fetched: int
    fetched_bytes: int
    reused: int
    seconds: float
    built_with_credentials: bool
    with_layers: bool = False

    @property
    def total_bytes(self) -> int:
        """What the disk must hold: blobs once each, and with layers, their unpacked size
        (estimated from the blobs: the sizing Job knows no more than the manifests)."""
        unique: dict[str, int] = {}
        unpacked: dict[str, int] = {}
        for image in self.images:
            for m in image.manifests:
                unique[m.descriptor.digest] = m.descriptor.size
                for layer in m.doc.layers:
                    unpacked[layer.digest] = estimated_unpacked(layer)
            for b in image.blobs:
                unique[b.digest] = b.size
        return sum(unique.values()) + (sum(unpacked.values()) if self.with_layers else 0)


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_failure(exc)
        return exc
    return group


def _warn_platform_mismatch(
    store: BlobStore, images: Sequence[ResolvedImage], platforms: Sequence[Platform]
) -> None:
    """A single-platform image for another platform is cached as asked, with a warning:
    pods on the cache's nodes would pull it and fail to start it."""
    wanted = {p.normalized() for p in platforms}
    for image in images:
        config = image.top.doc.config
        if image.top.doc.is_index or config is None:
            continue
        platform = config_platform(store.blob_path(config.digest).read_bytes())
        if platform is not None and platform not in wanted:
            log.warning("image %s is for %s only, not for %s", image.reference, platform,
                        ", ".join(str(p) for p in platforms))


async def _resolve_images(
    client: RegistryClient, options: BuildOptions
) -> tuple[ResolvedImage, ...]:
    limit = asyncio.Semaphore(options.concurrency)

    async def resolve(argument: str) -> ResolvedImage:
        async with limit:
            return await resolve_image(client, argument, options.platforms)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(resolve(a)) for a in options.images]
    except BaseExceptionGroup as eg:
        raise _first_failure(eg) from None
    return tuple(t.result() for t in tasks)


def _client(options: BuildOptions) -> RegistryClient:
    return RegistryClient(
        list(options.credentials), list(options.insecure), options.ca_file, options.policy,
        connections=options.concurrency * 2 + 4,
    )


async def resolve_all(options: BuildOptions) -> BuildSummary:
    """Resolve every image (manifests only) and report what a build would store: what the
    controller's sizing Job runs before it creates a disk of the right size."""
    started = time.monotonic()
    async with _client(options) as client:
        images = await _resolve_images(client, options)
        used = bool(client.credentials_used)
    summary = BuildSummary(images, 0, 0, 0, time.monotonic() - started, used, options.layers)
    log.info("resolved %d image(s): %s to store", len(images), format_bytes(summary.total_bytes))
    return summary


async def build(options: BuildOptions) -> BuildSummary:
    if options.resolve_only:
        return await resolve_all(options)
    started = time.monotonic()
    store = BlobStore(options.output)
    dropped = await asyncio.to_thread(store.prepare)
    if dropped:
        log.info("dropped %d partial file(s) of an interrupted build", dropped)
    try:
        return await _build_into(store, options, started)
    except BuildFailure as exc:
        if exc.reason is Reason.DISK_FULL:
            # A full disk keeps no half-written file, whichever download was writing it:
            # the space goes back, and a retry fetches those blobs again.
            await asyncio.to_thread(store.finish)
        raise


async def _build_into(store: BlobStore, options: BuildOptions, started: float) -> BuildSummary:
    async with _client(options) as client:
        images = await _resolve_images(client, options)
        limit = asyncio.Semaphore(options.concurrency)

        every: list[Descriptor] = []
        for image in images:
            every += [m.descriptor for m in image.manifests] + list(image.blobs)
        present = await asyncio.to_thread(store.present, every)
        plan = plan_build(images, present)
        new_files = len(plan.fetch) + len(plan.manifests) + 3
        await asyncio.to_thread(store.check_space, plan.bytes_to_write, new_files)
        log.info("plan: %d image(s), %d blob(s) to download (%s), %d already on disk",
                 len(images), len(plan.fetch), format_bytes(plan.bytes_to_fetch),
                 len(plan.reuse))
        for manifest in plan.manifests:
            if manifest.descriptor.digest not in present:
                await asyncio.to_thread(store.write_blob, manifest.descriptor.digest,
                                        manifest.body)

        # Fetch each blob from a repository that references it.
        source: dict[str, tuple[str, str, str]] = {}
        for image in images:
            ref = parse(image.reference)
            for manifest in image.manifests:
                doc = manifest.doc
                if doc.config is not None:
                    source.setdefault(doc.config.digest, (ref.registry, ref.repository, "config"))
                for layer in doc.layers:
                    source.setdefault(layer.digest, (ref.registry, ref.repository, "layer"))

        async def download(descriptor: Descriptor) -> None:
            registry, repository, role = source[descriptor.digest]
            async with limit:
                await fetch_blob(client, store, registry, repository, descriptor, role)

        # Largest first: the long downloads start early and the small ones fill the gaps.
        order = sorted(plan.fetch, key=lambda d: d.size, reverse=True)
        try:
            async with asyncio.TaskGroup() as group:
                for descriptor in order:
                    group.create_task(download(descriptor))
        except BaseExceptionGroup as eg:
            raise _first_failure(eg) from None
        used = sorted(client.credentials_used)

    await asyncio.to_thread(_warn_platform_mismatch, store, images, options.platforms)
    entries = [IndexEntry(i.reference, i.top.descriptor.media_type, i.top.descriptor.digest,
                          i.top.descriptor.size) for i in images]
    await asyncio.to_thread(store.write_layout, index_file_body(entries))
    keep = {d.digest for d in every}
    pruned = await asyncio.to_thread(store.prune, keep)
    if pruned:
        log.info("removed %d blob(s) no image of this build uses", pruned)
    if options.layers:
        layers = await unpack_images(store, images, options.concurrency)
    else:
        layers = {}
        await asyncio.to_thread(drop_layers, store)
    seen: set[str] = set()
    cached = []
    for image in images:
        if image.reference not in seen:
            seen.add(image.reference)
            cached.append(CachedImage(image.reference, image.top.descriptor.digest, image.size,
                                      image.top.descriptor.media_type,
                                      layers.get(image.reference, ())))
    if used:
        log.info("pulled with credentials from %s", ", ".join(used))
    description = CacheManifest(
        name=options.name,
        images=tuple(cached),
        platforms=tuple(str(p) for p in options.platforms),
        built_with_credentials=bool(used),
        serve_credentialed=options.serve_credentialed,
    )
    await asyncio.to_thread(store.write_cache_manifest, description.to_json())
    await asyncio.to_thread(store.finish)
    seconds = time.monotonic() - started
    summary = BuildSummary(images, len(plan.fetch), plan.bytes_to_fetch, len(plan.reuse),
                           seconds, bool(used), options.layers)
    log.info("done: %d image(s), %s stored, %d blob(s) downloaded (%s) in %.2fs, %.1f MB/s, "
             "%d reused", len(cached), format_bytes(summary.total_bytes), summary.fetched,
             format_bytes(summary.fetched_bytes), seconds,
             summary.fetched_bytes / max(seconds, 1e-6) / 1e6, summary.reused)
    return summary


__all__ = ["BuildFailure", "BuildOptions", "BuildSummary", "build"]
