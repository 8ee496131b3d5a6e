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
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from webhook.core.layer_chain import layer_dir_name
from webhook.core.ocilayout import InvalidDigest
from webhook.snapshotter.containerd import ContainerdClient
from webhook.snapshotter.core.layer_parents import disk_layer_of
from webhook.snapshotter.core.snapshots import (
    CRI_IMAGE_REF_LABEL,
    NAMESPACE_LABEL,
    SOURCE_LABEL,
    TARGET_REF_LABEL,
    AlreadyExists,
    FailedPrecondition,
    Info,
    Kind,
    Mount,
    NotFound,
    SnapshotError,
    Use,
    check_labels,
    choose_layer,
    matches,
    mounts_for,
    split_key,
    updated_labels,
)
from webhook.snapshotter.disks import DiskLayers
from webhook.snapshotter.metrics import SnapshotterMetrics
from webhook.snapshotter.store import Store

log = logging.getLogger("imagecache.snapshotter")
RESTORED_LABEL = "imagecache.dev/restored"  # on a disk-backed layer's record made again
CRASH_AT = "IMAGECACHE_SNAPSHOTTER_CRASH_AT"
UNMEASURED = -1  # a committed snapshot's size and inodes before its first Usage


def crash_point(name: str) -> None:
    """Tests only: die here (SIGKILL, as a crash would) when IMAGECACHE_SNAPSHOTTER_CRASH_AT
    names this point, so a test kills the process exactly between two writes, never by
    timing luck."""
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


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
                 materialize: bool = True, containerd: ContainerdClient | None = None,
                 copy_wait: float = 600.0, copy_delay: float = 0.0) -> None:
        self.root = root
        self.disks = disks
        self.metrics = metrics
        self.materialize = materialize
        self.containerd = containerd
        self.copy_wait = copy_wait
        self.copy_delay = copy_delay
        self._urgent: set[str] = set()  # copies a container waits for: no delay
        self._cp: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._removed_images: set[str] = set()
        (root / "snapshots").mkdir(parents=True, exist_ok=True)
        (root / "layers").mkdir(exist_ok=True)
        self.store = Store(root / "metadata.db")
        self._copying: dict[str, threading.Thread] = {}
        self._copy_lock = threading.Lock()

    def close(self) -> None:
        """Stop: copies under way are abandoned (their `.partial-*` is removed at the next
        start), so that shutting down never waits for, nor leaves behind, a `cp`."""
        self._stopping.set()
        with self._copy_lock:
            threads = list(self._copying.values())
            procs = list(self._cp.values())
        for proc in procs:
            proc.kill()
        for thread in threads:
            thread.join(30)
        self.store.close()
        self.disks.close()

    # ------------------------------------------------------------ paths and mounts

    def _dir(self, info: Info) -> Path:
        return self.root / "snapshots" / str(info.id)

    def local_copy(self, chain_hex: str) -> Path:
        return self.root / "layers" / chain_hex

    def layer_path(self, info: Info, pod_uid: str | None = None) -> str:
        """Where a committed snapshot's content is: its own directory, or for a disk-backed
        layer what webhook.snapshotter.core.snapshots.choose_layer decides for the container's
        pod."""
        if not info.source:
            return str(self._dir(info) / "fs")
        copy = self.local_copy(info.source)
        sources = [] if copy.is_dir() else self.disks.sources(info.source, pod_uid or "")
        choice = choose_layer(str(copy) if copy.is_dir() else "",
                              [(s.pod_uid, s.path) for s in sources], pod_uid)
        if choice.use == Use.WAIT:
            log.info("layer %s: pod %s has no disk with it; waiting for its copy", info.name,
                     pod_uid, extra={"fields": {"chainID": info.name, "pod": pod_uid}})
            self._start_copy(info.source, choice.path)
            self._wait_copy(info.source)
            if copy.is_dir():
                return str(copy)
            choice = choose_layer("", [], pod_uid)
        if choice.use == Use.GONE and self.disks.held(info.source):
            raise FailedPrecondition(
                f"layer {info.name} is on a cache disk whose origin cannot be checked through "
                "the API yet (see the snapshotter's log); the kubelet retries")
        if choice.use == Use.GONE:
            raise FailedPrecondition(
                f"layer {info.name} came from a cache disk that is no longer mounted on this "
                "node and was not copied; remove the image so that it is pulled again")
        return choice.path

    def _chain(self, info: Info) -> list[Info]:
        """The parents of a snapshot, the nearest first (lost disk-backed ones made again)."""
        parents = []
        name = info.parent
        while name:
            parent = self._get(name)
            parents.append(parent)
            name = parent.parent
        return parents

    def _get(self, name: str) -> Info:
        """The snapshot `name`; a disk-backed layer whose record a power cut lost is made
        again from its disk (NotFound when it cannot be)."""
        info = self.store.find(name) or self._restore(name)
        if info is None:
            raise NotFound(f"snapshot {name!r} does not exist")
        return info

    def _restore(self, name: str, depth: int = 0) -> Info | None:
        """Its commit is fsync'd 0.2 s late (webhook.snapshotter.store), so a power cut can
        lose the record of a layer taken from a disk while containerd's metadata (fsync'd)
        still names it: containerd would then fail every container of the image on a parent
        that does not exist. Its name (the chain ID) and its parent's (the layer below, from
        the disk's imagecache.json) are known, so it is made again, if the layer is still on
        a trusted disk or copied."""
        chain_hex = disk_layer_of(name)
        if not chain_hex or depth > 256:
            return None
        if not self.local_copy(chain_hex).is_dir() and not self.disks.sources(chain_hex):
            return None
        below = self.disks.parent_of(chain_hex)
        if below is None:
            return None
        parent = f"sha256:{below}" if below else ""
        if parent and self.store.find(parent) is None and self._restore(parent, depth + 1) is None:
            return None
        with self.store.transaction() as db:
            if self.store.find(name) is not None:  # another call made it meanwhile
                return self.store.find(name)
            info = self.store.create(db, name, parent, Kind.COMMITTED,
                                     {TARGET_REF_LABEL: name, SOURCE_LABEL: chain_hex,
                                      RESTORED_LABEL: "true"}, source=chain_hex)
        self.metrics.restored.inc()
        log.warning("layer %s: its record was lost (a power cut right after its pull?) and "
                    "containerd still names it; made again from its disk", name,
                    extra={"fields": {"chainID": name, "parent": parent}})
        return info

    def _mounts(self, info: Info, pod_uid: str | None = None) -> list[Mount]:
        lowers = [self.layer_path(p, pod_uid) for p in self._chain(info)]
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
        if parent:
            self._get(parent)  # a lost disk-backed parent is made again first
        with self.store.transaction() as db:
            info = self.store.create(db, key, parent, kind, labels)
            own = self._dir(info)
            shutil.rmtree(own, ignore_errors=True)  # a leftover of a crash before Cleanup
            (own / "fs").mkdir(parents=True)
            if kind == Kind.ACTIVE:
                (own / "work").mkdir()
            crash_point("create-dirs")  # before the record's commit
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
        sources = self.disks.sources(chain_hex)
        copied = self.local_copy(chain_hex).is_dir()
        existing = self.store.find(target)
        if existing is not None and existing.kind == Kind.COMMITTED:
            if sources or copied:
                raise AlreadyExists(f"layer {target} exists")
            return  # its disk is gone and it was never copied: containerd unpacks it anew
        if not sources and not copied:
            return
        namespace, _ = split_key(key)
        # Not fsync'd here (webhook.snapshotter.store): the content is on the cache disk.
        with self.store.transaction(durable=False) as db:
            self.store.create(db, target, parent, Kind.COMMITTED,
                              {**labels, SOURCE_LABEL: chain_hex, NAMESPACE_LABEL: namespace},
                              source=chain_hex)
        try:  # committed: whatever fails now, containerd must hear that the layer exists
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
                self._start_copy(chain_hex, where.path, delay=self.copy_delay)
        except Exception as exc:
            log.error("layer %s: after taking it from a disk: %s: %s", target,
                      type(exc).__name__, exc)
        raise AlreadyExists(f"layer {target} is on a cache disk")

    def _start_copy(self, chain_hex: str, source: str, delay: float = 0.0) -> None:
        with self._copy_lock:
            if delay == 0.0:
                self._urgent.add(chain_hex)
            if chain_hex in self._copying or self.local_copy(chain_hex).is_dir():
                return
            thread = threading.Thread(target=self._copy, args=(chain_hex, source, delay),
                                      name=f"copy-{chain_hex[:12]}", daemon=True)
            self._copying[chain_hex] = thread
        thread.start()

    def _copy(self, chain_hex: str, source: str, delay: float) -> None:
        """Materialize: copy a disk layer into the root (owners, modes, xattrs, whiteout
        devices and hard links kept by `cp -a`), atomically by rename. After `delay`
        seconds, unless a container waits for it: the copy's I/O then does not slow the
        start of the containers that pulled the image."""
        final = self.local_copy(chain_hex)
        partial = self.root / "layers" / f".partial-{chain_hex}"
        waited = 0.0
        while waited < delay and chain_hex not in self._urgent:
            if self._stopping.wait(0.1):
                return
            waited += 0.1
        try:
            shutil.rmtree(partial, ignore_errors=True)
            with self._copy_lock:
                if self._stopping.is_set():
                    return
                proc = self._cp[chain_hex] = subprocess.Popen(
                    ["cp", "-a", "--", source, str(partial)], stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE)
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise OSError(f"cp exited {proc.returncode}: {err.decode(errors='replace')}")
            # On disk before it is named complete: a power cut must not leave a complete-
            # looking copy with empty files (rename is not ordered after delayed writes).
            synced = subprocess.run(["sync", "--file-system", "--", str(partial)],
                                    capture_output=True, check=False)
            if synced.returncode != 0:
                raise OSError(f"sync exited {synced.returncode}: "
                              f"{synced.stderr.decode(errors='replace')}")
            os.rename(partial, final)
            self.metrics.materialized.inc()
            log.info("layer %s copied from %s", chain_hex, source,
                     extra={"fields": {"chainID": "sha256:" + chain_hex, "from": source}})
        except (OSError, subprocess.SubprocessError) as exc:
            if self._stopping.is_set():
                return  # stopped on purpose: the next start removes the partial copy
            shutil.rmtree(partial, ignore_errors=True)
            log.warning("layer %s: copy from %s failed: %s", chain_hex, source, exc,
                        extra={"fields": {"chainID": "sha256:" + chain_hex}})
        finally:
            with self._copy_lock:
                self._copying.pop(chain_hex, None)
                self._cp.pop(chain_hex, None)
                self._urgent.discard(chain_hex)

    def _wait_copy(self, chain_hex: str) -> None:
        with self._copy_lock:
            thread = self._copying.get(chain_hex)
        if thread is not None:
            thread.join(self.copy_wait)

    def dangling(self) -> list[Info]:
        """Disk-backed layers neither copied, nor being copied, nor on a mounted disk."""
        with self._copy_lock:
            copying = set(self._copying)
        return [i for i in self.store.all()
                if i.source and i.source not in copying and not self.local_copy(
                    i.source).is_dir() and not self.disks.held(i.source)]

    def remove_dangling_images(self) -> int:
        """Never dangling: an image whose disk-backed layer is gone is removed through CRI,
        so that the kubelet pulls it again instead of failing to create containers."""
        removed = 0
        for info in self.dangling():
            ref = info.labels.get(CRI_IMAGE_REF_LABEL, "")
            if not ref:
                log.warning("layer %s is gone with its disk, and its image is unknown (CRI's "
                            "disable_snapshot_annotations is on; configure turns it off)",
                            info.name, extra={"fields": {"chainID": info.name}})
                continue
            if ref in self._removed_images or self.containerd is None:
                continue
            self._removed_images.add(ref)
            if self.containerd.remove_image(ref):
                removed += 1
                self.metrics.images_removed.inc()
                log.warning("image %s removed: its layer %s was on a cache disk that is gone "
                            "and was not copied; the kubelet pulls it again", ref, info.name,
                            extra={"fields": {"image": ref, "chainID": info.name}})
        return removed

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of a container's snapshot when its task starts: the container exists
        in containerd by then, so its pod is known and decides which disks it may use."""
        info = self.store.get(key)
        if info.kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(f"snapshot {key!r} is not active or view")
        return self._mounts(info, self._pod_of(key))

    def _pod_of(self, key: str) -> str | None:
        namespace, name = split_key(key)
        if self.containerd is None or not namespace:
            return None
        return self.containerd.pod_uid(namespace, name)

    def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        check_labels(labels)
        info = self.store.get(key)
        # Measured when first asked (Usage), not here: walking a layer's files (0.2 s for one
        # of 11,000 files) would sit in every uncached pull, between two layers' unpacking.
        size, inodes = (UNMEASURED, UNMEASURED) if not info.source else (0, 0)
        with self.store.transaction() as db:
            self.store.commit(db, key, name, labels, size, inodes)
        crash_point("commit-recorded")
        shutil.rmtree(self._dir(info) / "work", ignore_errors=True)

    def remove(self, key: str) -> None:
        with self.store.transaction() as db:
            info = self.store.remove(db, key)
        crash_point("remove-recorded")
        if not info.source:
            shutil.rmtree(self._dir(info), ignore_errors=True)

    def stat(self, key: str) -> Info:
        return self._get(key)

    def update(self, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        check_labels(labels)
        with self.store.transaction() as db:
            current = self.store.get(name)
            return self.store.set_labels(db, name, updated_labels(current.labels, labels,
                                                                  paths))

    def list(self, filters: Sequence[str]) -> list[Info]:
        return [i for i in self.store.all() if matches(i, filters)]

    def usage(self, key: str) -> tuple[int, int]:
        info = self._get(key)
        if info.source:
            return 0, 0  # the cache disk's, not the node's image filesystem
        if info.kind == Kind.ACTIVE:
            return disk_usage(self._dir(info) / "fs")
        if info.size == UNMEASURED:  # a committed layer does not change: measured once
            size, inodes = disk_usage(self._dir(info) / "fs")
            with self.store.transaction(durable=False) as db:  # measured again if lost
                self.store.set_usage(db, info.name, size, inodes)
            return size, inodes
        return info.size, info.inodes

    def cleanup(self) -> int:
        """Reconcile the root with the store (at start, and when containerd asks after its
        garbage collection; containerd's overlay snapshotter's Cleanup is the reference):
        directories no snapshot owns (a crash between the store and the disk), the overlay
        workdir a committed snapshot no longer needs (a crash right after its Commit), half
        copies and copies of layers no snapshot uses are removed; an active snapshot whose
        directories a power cut lost (the record is fsync'd, a mkdir is not) gets empty ones.
        Records containerd no longer knows are removed by containerd's own garbage
        collection (Walk, then Remove of what its metadata does not name)."""
        ids = self.store.ids()
        removed = 0
        for info in self.store.all():
            if info.source:
                continue
            own = self._dir(info)
            if info.kind == Kind.COMMITTED and (own / "work").exists():
                shutil.rmtree(own / "work", ignore_errors=True)
                removed += 1
            elif info.kind != Kind.COMMITTED and not (own / "fs").is_dir():
                log.warning("snapshot %s had lost its directory; made an empty one", info.name,
                            extra={"fields": {"key": info.name}})
                (own / "fs").mkdir(parents=True, exist_ok=True)
                if info.kind == Kind.ACTIVE:
                    (own / "work").mkdir(exist_ok=True)
        for entry in (self.root / "snapshots").iterdir():
            if not (entry.name.isdigit() and int(entry.name) in ids):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        used = {i.source for i in self.store.all() if i.source}
        with self._copy_lock:
            copying = set(self._copying)
        for entry in (self.root / "layers").iterdir():
            name = entry.name.removeprefix(".partial-")
            if name not in copying and (entry.name != name or name not in used):
                shutil.rmtree(entry, ignore_errors=True)  # half copies, copies nobody uses
                removed += 1
        return removed
