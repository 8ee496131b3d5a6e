"""`imagecache snapshotter forget-images`: on rolling the snapshotter back, remove from
containerd every image with a layer taken from a cache disk
(webhook.snapshotter.core.disk_images says
why), so that the kubelet pulls it again instead of failing to create its containers.

Reads the snapshotter's database read-only (the snapshotter may be running) and asks
containerd through CRI (ListImages, verbose ImageStatus, RemoveImage).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from webhook.core.layer_chain import InvalidConfig
from webhook.snapshotter.core.disk_images import images_from_disks, status_diff_ids


class ForgetError(Exception):
    """Something the command cannot work with; the message names the flag or the image."""


def disk_layers(root: Path) -> set[str]:
    """Chain IDs of every layer the snapshotter took from a cache disk (copied or not)."""
    path = root / "metadata.db"
    if not path.is_file():
        raise ForgetError(f"--root {root}: no metadata.db there; give the snapshotter's root "
                          "(its serve --root)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT DISTINCT source FROM snapshots WHERE source != ''").fetchall()
    except sqlite3.Error as exc:
        raise ForgetError(f"--root {root}: cannot read metadata.db: {exc}") from None
    finally:
        db.close()
    return {f"sha256:{row[0]}" for row in rows}


def forget_images(root: Path, containerd_socket: str, dry_run: bool) -> int:
    import grpc

    from webhook.snapshotter.containerd import ContainerdClient

    layers = disk_layers(root)
    client = ContainerdClient(containerd_socket)
    try:
        images: dict[str, list[str]] = {}
        names: dict[str, list[str]] = {}
        for image_id, refs in client.images():
            try:
                images[image_id] = list(status_diff_ids(client.status_info(image_id), image_id))
            except InvalidConfig as exc:
                print(f"skipped: {exc}")
                continue
            names[image_id] = refs
        doomed = images_from_disks(images, layers)
        for image_id in doomed:
            what = ", ".join(names[image_id]) or image_id
            if not dry_run:
                client.remove(image_id)
            print(f"{'would remove' if dry_run else 'removed'} {what} ({image_id}): a layer "
                  "came from a cache disk and was never downloaded")
    except grpc.RpcError as exc:
        raise ForgetError(f"--containerd-socket {containerd_socket}: {exc.code().name}: "
                          f"{exc.details()}") from None
    finally:
        client.close()
    print(f"{len(doomed)} of {len(images)} images {'would be ' if dry_run else ''}removed "
          f"({len(layers)} layers came from cache disks); the kubelet pulls them again")
    return 0
