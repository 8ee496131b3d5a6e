"""The node snapshotter: containerd's overlay snapshotter semantics over a sqlite store and a
root directory, plus layers taken ready-unpacked from cache disks (DESIGN.md, "Node
snapshotter").

Root layout:  metadata.db            the store (webhook.snapshotter.store)
              snapshots/<id>/fs      an ordinary snapshot's content (upperdir when active)
              snapshots/<id>/work    its overlay workdir
              layers/<chain hex>/    a disk-backed layer copied into the root (materialized)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from webhook.core.layer_chain import layer_dir_name
from webhook.core.ocilayout import InvalidDigest
from webhook.core.snapshots import (
    SOURCE_LABEL,
    TARGET_REF_LABEL,
    AlreadyExists,
    FailedPrecondition,
    Info,
    Kind,
    Mount,
    SnapshotError,
    check_labels,
    matches,
    mounts_for,
    updated_labels,
)
from webhook.snapshotter.disks import DiskLayers
from webhook.snapshotter.metrics import SnapshotterMetrics
from webhook.snapshotter.store import Store

log = logging.getLogger("imagecache.snapshotter")


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) under `path`, hard links counted once (containerd's fs.DiskUsage)."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    seen = {(top.st_dev, top.st_ino)}
    size = top.st_blocks * 512
    for directory, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                st = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512
    return size, len(seen)


class Snapshotter:
    def __init__(self, root: Path, disks: DiskLayers, metrics: SnapshotterMetrics,
                 materialize: bool = True) -> None:
        self.root = root
        self.disks = disks
        self.metrics = metrics
        self.materialize = materialize
        (root / "snapshots").mkdir(parents=True, exist_ok=True)
        (root / "layers").mkdir(exist_ok=True)
        self.store = Store(root / "metadata.db")
        self._copying: dict[str, threading.Thread] = {}
        self._copy_lock = threading.Lock()

    def close(self) -> None:
        with self._copy_lock:
            threads = list(self._copying.values())
        for thread in threads:
            thread.join()
        self.store.close()

    # ------------------------------------------------------------ paths and mounts

    def _dir(self, info: Info) -> Path:
        return self.root / "snapshots" / str(info.id)

    def local_copy(self, chain_hex: str) -> Path:
        return self.root / "layers" / chain_hex

    def layer_path(self, info: Info) -> str:
        """Where a committed snapshot's content is: its own directory, the materialized copy
        of a disk-backed layer, or the layer on a mounted cache disk."""
        if not info.source:
            return str(self._dir(info) / "fs")
        copy = self.local_copy(info.source)
        if copy.is_dir():
            return str(copy)
        sources = self.disks.sources(info.source)
        if not sources:
            raise FailedPrecondition(
                f"layer {info.name} came from a cache disk that is no longer mounted on this "
                "node and was not copied; remove the image so that it is pulled again")
        return sources[0].path

    def _mounts(self, info: Info) -> list[Mount]:
        lowers = [self.layer_path(p) for p in self.store.chain(info)]
        own = self._dir(info)
        return mounts_for(info.kind, str(own / "fs"), str(own / "work"), lowers)

    # ------------------------------------------------------------ the API

    def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        check_labels(labels)
        target = labels.get(TARGET_REF_LABEL, "")
        if target:
            try:
                self._from_disk(key, parent, labels, target)
            except SnapshotError:
                raise
            except Exception as exc:  # fail safe: containerd downloads the layer instead
                self.metrics.fallbacks.inc()
                log.warning("layer %s: cannot take it from a cache disk (%s: %s); preparing an "
                            "ordinary snapshot", target, type(exc).__name__, exc,
                            extra={"fields": {"chainID": target, "key": key}})
        return self._create(key, parent, Kind.ACTIVE, labels)

    def view(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        check_labels(labels)
        return self._create(key, parent, Kind.VIEW, labels)

    def _create(self, key: str, parent: str, kind: Kind,
                labels: Mapping[str, str]) -> list[Mount]:
        with self.store.transaction() as db:
            info = self.store.create(db, key, parent, kind, labels)
            own = self._dir(info)
            shutil.rmtree(own, ignore_errors=True)  # a leftover of a crash before Cleanup
            (own / "fs").mkdir(parents=True)
            if kind == Kind.ACTIVE:
                (own / "work").mkdir()
        self.metrics.prepared.labels(kind.name.lower()).inc()
        return self._mounts(info)

    def _from_disk(self, key: str, parent: str, labels: Mapping[str, str],
                   target: str) -> None:
        """The remote-layer rule: a layer a mounted cache disk holds is committed as backed by
        that disk, and containerd is told it exists (it then neither fetches nor unpacks)."""
        try:
            chain_hex = layer_dir_name(target)
        except InvalidDigest:
            return
        existing = self.store.find(target)
        if existing is not None and existing.kind == Kind.COMMITTED:
            raise AlreadyExists(f"layer {target} exists")
        sources = self.disks.sources(chain_hex)
        if not sources and not self.local_copy(chain_hex).is_dir():
            return
        with self.store.transaction() as db:
            self.store.create(db, target, parent, Kind.COMMITTED,
                              {**labels, SOURCE_LABEL: chain_hex}, source=chain_hex)
        where = sources[0] if sources else None
        self.metrics.disk_layers.inc()
        log.info("layer %s from cache disk %s (cache %s)", target,
                 where.disk if where else self.local_copy(chain_hex),
                 where.cache if where else "-",
                 extra={"fields": {"chainID": target, "key": key, "parent": parent,
                                   "disk": where.disk if where else "",
                                   "cache": where.cache if where else "",
                                   "pod": where.pod_uid if where else ""}})
        if self.materialize and where is not None:
            self._start_copy(chain_hex, where.path)
        raise AlreadyExists(f"layer {target} is on a cache disk")

    def _start_copy(self, chain_hex: str, source: str) -> None:
        with self._copy_lock:
            if chain_hex in self._copying or self.local_copy(chain_hex).is_dir():
                return
            thread = threading.Thread(target=self._copy, args=(chain_hex, source),
                                      name=f"copy-{chain_hex[:12]}", daemon=True)
            self._copying[chain_hex] = thread
        thread.start()

    def _copy(self, chain_hex: str, source: str) -> None:
        """Materialize: copy a disk layer into the root (owners, modes, xattrs, whiteout
        devices and hard links kept by `cp -a`), atomically by rename."""
        final = self.local_copy(chain_hex)
        partial = self.root / "layers" / f".partial-{chain_hex}"
        try:
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(["cp", "-a", "--", source, str(partial)], check=True,
                           capture_output=True, timeout=3600)
            os.rename(partial, final)
            self.metrics.materialized.inc()
            log.info("layer %s copied from %s", chain_hex, source,
                     extra={"fields": {"chainID": "sha256:" + chain_hex, "from": source}})
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            log.warning("layer %s: copy from %s failed: %s", chain_hex, source, exc,
                        extra={"fields": {"chainID": "sha256:" + chain_hex}})
        finally:
            with self._copy_lock:
                self._copying.pop(chain_hex, None)

    def wait_copies(self) -> None:
        with self._copy_lock:
            threads = list(self._copying.values())
        for thread in threads:
            thread.join()

    def mounts(self, key: str) -> list[Mount]:
        info = self.store.get(key)
        if info.kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(f"snapshot {key!r} is not active or view")
        return self._mounts(info)

    def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        check_labels(labels)
        info = self.store.get(key)
        size, inodes = disk_usage(self._dir(info) / "fs") if not info.source else (0, 0)
        with self.store.transaction() as db:
            self.store.commit(db, key, name, labels, size, inodes)
        shutil.rmtree(self._dir(info) / "work", ignore_errors=True)

    def remove(self, key: str) -> None:
        with self.store.transaction() as db:
            info = self.store.remove(db, key)
        if not info.source:
            shutil.rmtree(self._dir(info), ignore_errors=True)

    def stat(self, key: str) -> Info:
        return self.store.get(key)

    def update(self, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        check_labels(labels)
        with self.store.transaction() as db:
            current = self.store.get(name)
            return self.store.set_labels(db, name, updated_labels(current.labels, labels,
                                                                  paths))

    def list(self, filters: Sequence[str]) -> list[Info]:
        return [i for i in self.store.all() if matches(i, filters)]

    def usage(self, key: str) -> tuple[int, int]:
        info = self.store.get(key)
        if info.source:
            return 0, 0  # the cache disk's, not the node's image filesystem
        if info.kind == Kind.ACTIVE:
            return disk_usage(self._dir(info) / "fs")
        return info.size, info.inodes

    def cleanup(self) -> int:
        """Remove directories no snapshot owns (a crash between the store and the disk)."""
        ids = self.store.ids()
        removed = 0
        for entry in (self.root / "snapshots").iterdir():
            if not (entry.name.isdigit() and int(entry.name) in ids):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        for entry in (self.root / "layers").iterdir():
            if entry.name.startswith(".partial-") and entry.name[9:] not in self._copying:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed
