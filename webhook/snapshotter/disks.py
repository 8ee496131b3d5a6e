"""Which unpacked layers the cache disks mounted on this node hold.

A cache disk is a directory with imagecache.json, found as the node mirror finds them (the
kubelet's CSI mount layout below `--disks-root`, then any directory up to `--depth` levels
down). A layer counts only when imagecache.json lists it as unpacked (the builder verified
it against its diff ID) and `layers/<chainID hex>/` is a real directory. Scans are cheap
(one stat of imagecache.json per disk, its body re-read only when it changed) and happen on
demand: at most once per `ttl` seconds, at once when the mount table changed (a disk mounted
or unmounted; poll() on /proc/self/mountinfo, one syscall) and on a miss. Between scans a
layer is found through an index chain ID -> disks, checked by one stat of the disk's
imagecache.json (still the disk scanned) and one lstat of the layer directory.
"""

from __future__ import annotations

import glob
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from webhook.core.cachedisk import MANIFEST_FILE, InvalidCacheManifest, parse_manifest
from webhook.core.layer_chain import LAYERS_DIR, layer_dir_name
from webhook.core.ocilayout import InvalidDigest
from webhook.snapshotter.core.disk_origin import Volume, shared_volumes, volume_of
from webhook.snapshotter.core.layer_parents import layer_parents
from webhook.snapshotter.origin import DiskOrigin

log = logging.getLogger("imagecache.snapshotter")

KUBELET_CSI_GLOB = "*/volumes/kubernetes.io~csi/*/mount"
MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class LayerSource:
    path: str  # the layer directory on the disk
    disk: str  # the disk's mount point
    cache: str  # the ImageCache the disk was built for
    pod_uid: str  # the pod whose volume it is ("" outside the kubelet's layout)


@dataclass(frozen=True, slots=True)
class _Disk:
    path: str
    stamp: tuple[int, ...]
    cache: str
    layers: frozenset[str]  # chain ID hex of the layers imagecache.json lists as unpacked
    pod_uid: str
    volume: Volume | None  # the pod and PV, when it is the kubelet's mount of a PV
    parents: dict[str, str]  # chain ID hex -> the parent's ("" for a base layer)


def _stamp(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(os.path.join(path, MANIFEST_FILE))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _is_real_dir(path: str) -> bool:
    """A directory, not a symlink to one (a disk's layer must not point elsewhere)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class DiskLayers:
    def __init__(self, root: str, globs: Sequence[str] = (KUBELET_CSI_GLOB,), depth: int = 2,
                 ttl: float = 1.0, origin: DiskOrigin | None = None) -> None:
        self.root = os.path.normpath(root)
        self.origin = origin  # None: every disk is trusted (--disk-origin any)
        self._shared: frozenset[str] = frozenset()
        self.globs = tuple(globs)
        self.depth = depth
        self.ttl = ttl
        self._disks: dict[str, _Disk] = {}
        self._index: dict[str, tuple[_Disk, ...]] = {}
        self._scanned = -1e9
        self._lock = threading.Lock()
        self._mountinfo: int | None = None
        self._poll = select.poll()
        try:  # POLLPRI|POLLERR each time a mount is added or removed in this namespace
            self._mountinfo = os.open("/proc/self/mountinfo", os.O_RDONLY)
            self._poll.register(self._mountinfo, select.POLLPRI | select.POLLERR)
        except OSError:
            pass  # no procfs: the ttl and the miss rescans still find disks

    def close(self) -> None:
        if self._mountinfo is not None:
            os.close(self._mountinfo)
            self._mountinfo = None

    def _mounts_changed(self) -> bool:
        """True once after each change of the mount table (the kernel re-arms on report)."""
        with self._lock:
            return self._mountinfo is not None and bool(self._poll.poll(0))

    def _candidates(self) -> set[str]:
        found: set[str] = set()
        if not os.path.isdir(self.root):
            return found
        for pattern in self.globs:
            for match in glob.glob(os.path.join(glob.escape(self.root), pattern)):
                if os.path.isfile(os.path.join(match, MANIFEST_FILE)):
                    found.add(os.path.normpath(match))
        pending = [(self.root, 0)]
        while pending:
            directory, level = pending.pop()
            if os.path.isfile(os.path.join(directory, MANIFEST_FILE)):
                found.add(os.path.normpath(directory))
                continue
            if level >= self.depth:
                continue
            try:
                with os.scandir(directory) as entries:
                    pending += [(e.path, level + 1) for e in entries
                                if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
        return found

    def _pod_uid(self, path: str) -> str:
        relative = os.path.relpath(path, self.root).split(os.sep)
        # <uid>/volumes/<plugin>/<volume>[/mount]: CSI volumes end in mount, local PVs do not
        if len(relative) >= 4 and relative[1] == "volumes":
            return relative[0]
        return ""

    def _load(self, path: str, stamp: tuple[int, ...]) -> _Disk | None:
        try:
            with open(os.path.join(path, MANIFEST_FILE), "rb") as f:
                manifest = parse_manifest(f.read(MAX_MANIFEST_BYTES))
        except (OSError, InvalidCacheManifest) as exc:
            log.warning("cache disk %s is not used: %s", path, exc,
                        extra={"fields": {"disk": path}})
            return None
        layers = set()
        for image in manifest.images:
            for layer in image.layers:
                if layer.unpacked:
                    try:
                        layers.add(layer_dir_name(layer.chain_id))
                    except InvalidDigest:
                        continue
        disk = _Disk(path, stamp, manifest.name, frozenset(layers), self._pod_uid(path),
                     volume_of(os.path.relpath(path, self.root)),
                     layer_parents(manifest.images))
        log.info("cache disk %s (cache %s): %d unpacked layers", path, manifest.name,
                 len(layers), extra={"fields": {"disk": path, "cache": manifest.name,
                                                "layers": len(layers), "pod": disk.pod_uid}})
        return disk

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._scanned < self.ttl:
                return
            disks: dict[str, _Disk] = {}
            for path in sorted(self._candidates()):
                stamp = _stamp(path)
                if stamp is None:
                    continue
                known = self._disks.get(path)
                disk = known if known is not None and known.stamp == stamp else self._load(
                    path, stamp)
                if disk is not None:
                    disks[path] = disk
            for path in self._disks.keys() - disks.keys():
                log.info("cache disk gone: %s", path, extra={"fields": {"disk": path}})
            self._disks = disks
            self._shared = shared_volumes(d.volume for d in disks.values() if d.volume)
            if self.origin is not None:
                self.origin.forget((d.path, d.volume) for d in disks.values())
            index: dict[str, list[_Disk]] = {}
            for disk in disks.values():
                for chain_hex in disk.layers:
                    index.setdefault(chain_hex, []).append(disk)
            self._index = {k: tuple(v) for k, v in index.items()}
            self._scanned = time.monotonic()

    def sources(self, chain_hex: str, pod_uid: str = "") -> list[LayerSource]:
        """Disks holding the layer, the disk of `pod_uid` first. A miss looks again at once:
        the kubelet mounts a pod's disk just before it pulls the pod's images."""
        self.refresh(force=self._mounts_changed())
        found = self._sources(chain_hex, pod_uid)
        if not found:
            self.refresh(force=True)
            found = self._sources(chain_hex, pod_uid)
        return found

    def _sources(self, chain_hex: str, pod_uid: str) -> list[LayerSource]:
        found = []
        for disk in self._index.get(chain_hex, ()):
            path = os.path.join(disk.path, LAYERS_DIR, chain_hex)
            # Still the disk that was scanned (not unmounted or rebuilt since)?
            if _stamp(disk.path) == disk.stamp and _is_real_dir(path) and self._trusted(disk):
                found.append(LayerSource(path, disk.path, disk.cache, disk.pod_uid))
        found.sort(key=lambda s: (s.pod_uid != pod_uid, s.disk))
        return found

    def held(self, chain_hex: str) -> bool:
        """A mounted disk holds the layer and is not refused for good: its layer's record
        does not dangle, even while the API cannot be asked (a snapshotter restarted during
        an API outage must not make CRI remove images whose disks are there)."""
        self.refresh()
        for disk in self._index.get(chain_hex, ()):
            path = os.path.join(disk.path, LAYERS_DIR, chain_hex)
            if _stamp(disk.path) == disk.stamp and _is_real_dir(path) and (
                    self.origin is None or not self.origin.refused(
                        disk.volume, disk.volume is not None and disk.volume.pv in self._shared)):
                return True
        return False

    def parent_of(self, chain_hex: str) -> str | None:
        """The chain ID hex of the layer below, per a trusted disk holding the layer ("" for
        a base layer); None when no such disk says."""
        for disk in self._index.get(chain_hex, ()):
            if chain_hex in disk.parents and self._trusted(disk):
                return disk.parents[chain_hex]
        return None

    def _trusted(self, disk: _Disk) -> bool:
        """Its origin proven through the API (webhook.snapshotter.origin), unless every disk
        is trusted."""
        if self.origin is None:
            return True
        shared = disk.volume is not None and disk.volume.pv in self._shared
        return self.origin.trusted(disk.path, disk.volume, shared)

    def count(self) -> int:
        return len(self._disks)
