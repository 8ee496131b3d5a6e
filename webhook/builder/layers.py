"""The build's last step before imagecache.json: every layer of every image (each platform
the cache holds) unpacked once under `/layers/<chainID hex>/`, and the per-image layer list
that imagecache.json records (DESIGN.md, "The cache disk").

A layer that cannot be unpacked safely (a hostile or unreadable tar, a diff ID mismatch, a
compression the builder cannot read) is left out with a warning and recorded as not
unpacked: the node snapshotter then lets containerd pull that layer as usual. Lack of
privilege and a full disk fail the build: both need the operator's fix.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from webhook.builder.blobstore import BlobStore, disk_full
from webhook.builder.core.build_plan import ResolvedImage
from webhook.builder.core.layer_tar import LayerRefused
from webhook.builder.unpack import (
    LayerMismatch,
    Unpacked,
    clear_partial,
    is_permission_error,
    prune_layers,
    unpack_layer,
)
from webhook.core.build_errors import BuildFailure, Reason, format_bytes
from webhook.core.cachedisk import CachedLayer
from webhook.core.layer_chain import (
    LAYERS_DIR,
    ImageLayer,
    InvalidConfig,
    config_diff_ids,
    image_layers,
    layer_dir_name,
)
from webhook.core.registry_manifest import config_platform, is_foreign

log = logging.getLogger("imagecache.builder")

NEEDS_PRIVILEGE = (
    "writing /layers/ needs root with CAP_CHOWN, CAP_FOWNER, CAP_FSETID, CAP_MKNOD and "
    "CAP_SYS_ADMIN (whiteouts are 0:0 character devices, opaque directories carry "
    "trusted.overlay.opaque); give the builder Job those capabilities (docs/builder.md) or "
    "build without --layers"
)


def _platform_layers(store: BlobStore, image: ResolvedImage
                     ) -> list[tuple[str, tuple[ImageLayer, ...]]]:
    """(platform, layers) of each image manifest the build holds for `image`."""
    found = []
    for manifest in image.manifests:
        doc = manifest.doc
        if doc.is_index or doc.config is None:
            continue
        layers = [d for d in doc.layers if not is_foreign(d)]
        if len(layers) != len(doc.layers):
            log.warning("image %s has foreign layers; its layers are not unpacked",
                        image.reference)
            continue
        body = store.blob_path(doc.config.digest).read_bytes()
        platform = config_platform(body)
        try:
            diff_ids = config_diff_ids(body, image.reference)
            found.append((str(platform or ""), image_layers(layers, diff_ids, image.reference)))
        except InvalidConfig as exc:
            log.warning("layers of %s are not unpacked: %s", image.reference, exc)
    return found


def _unpack_one(store: BlobStore, layers_dir: Path, layer: ImageLayer) -> Unpacked | None:
    try:
        return unpack_layer(store.blob_path(layer.digest), layer.media_type, layer.diff_id,
                            layer.chain_id, layers_dir)
    except (LayerRefused, LayerMismatch) as exc:
        log.warning("layer %s not unpacked (containerd will pull it as usual): %s",
                    layer.digest, exc)
        return None
    except OSError as exc:
        if exc.errno is not None and is_permission_error(exc):
            raise BuildFailure(Reason.INVALID_ARGUMENT,
                               f"cannot unpack layer {layer.digest}: {exc.strerror}; "
                               f"{NEEDS_PRIVILEGE}") from None
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise disk_full(store.output) from None
        raise BuildFailure(Reason.INTERNAL,
                           f"cannot unpack layer {layer.digest}: {exc.strerror or exc}") from None


def drop_layers(store: BlobStore) -> None:
    """Without --layers: no layer of an earlier build may outlive the imagecache.json that
    listed it."""
    layers_dir = store.output / LAYERS_DIR
    if layers_dir.is_dir() and not layers_dir.is_symlink():
        shutil.rmtree(layers_dir)


async def unpack_images(store: BlobStore, images: Sequence[ResolvedImage],
                        concurrency: int) -> dict[str, tuple[CachedLayer, ...]]:
    """Unpack every layer once; returns each image reference's layers for imagecache.json."""
    layers_dir = store.output / LAYERS_DIR
    await asyncio.to_thread(layers_dir.mkdir, exist_ok=True)
    dropped = await asyncio.to_thread(clear_partial, layers_dir)
    if dropped:
        log.info("dropped %d half-unpacked layer(s) of an interrupted build", dropped)
    per_image: dict[str, list[tuple[str, tuple[ImageLayer, ...]]]] = {}
    unique: dict[str, ImageLayer] = {}
    for image in images:
        found = await asyncio.to_thread(_platform_layers, store, image)
        per_image[image.reference] = found
        for _, layers in found:
            for layer in layers:
                unique.setdefault(layer.chain_id, layer)
    limit = asyncio.Semaphore(max(1, min(concurrency, 4)))
    done: dict[str, bool] = {}
    total = len(unique)

    async def one(layer: ImageLayer) -> None:
        async with limit:
            result = await asyncio.to_thread(_unpack_one, store, layers_dir, layer)
        done[layer.chain_id] = result is not None
        if result is not None and not result.reused:
            log.info("unpacked layer %d/%d %s -> layers/%s: %d members, %s in %.2fs",
                     len(done), total, layer.digest, layer_dir_name(layer.chain_id),
                     result.members, format_bytes(result.bytes), result.seconds)

    try:
        async with asyncio.TaskGroup() as group:
            for layer in sorted(unique.values(), key=lambda x: x.size, reverse=True):
                group.create_task(one(layer))
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    await asyncio.to_thread(clear_partial, layers_dir)
    removed = await asyncio.to_thread(
        prune_layers, layers_dir, {layer_dir_name(c) for c, ok in done.items() if ok})
    if removed:
        log.info("removed %d unpacked layer(s) no image of this build uses", removed)
    log.info("layers: %d unpacked, %d not unpacked", sum(done.values()),
             len(done) - sum(done.values()))
    return {
        reference: tuple(
            CachedLayer(layer.digest, layer.diff_id, layer.chain_id, layer.size,
                        done.get(layer.chain_id, False), platform)
            for platform, layers in found for layer in layers)
        for reference, found in per_image.items()
    }
