"""Finding the cache disks mounted on the node and indexing what they hold.

`DiskWatcher.refresh()` is called once a second (in a thread: it stats and reads files). It
lists candidate directories (the kubelet CSI glob under --root, and any directory up to
--depth below --root that directly holds imagecache.json), stats them cheaply, and reloads
only what changed (webhook.mirror.core.mirror_disks.plan_refresh). The resulting NodeIndex is
swapped in whole, so a request sees one consistent view.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from webhook.core.cachedisk import (
    MANIFEST_FILE,
    OCI_DIR,
    CacheManifest,
    InvalidCacheManifest,
    parse_manifest,
)
from webhook.mirror.core.mirror_disks import Stamp, disk_order, plan_refresh
from webhook.mirror.core.mirror_index import (
    MAX_MANIFEST_BYTES,
    DiskIndex,
    InvalidLayout,
    NodeIndex,
    ReadBlob,
    blob_path,
    build_disk_index,
)

log = logging.getLogger("imagecache.mirror")

MAX_DESCRIPTION_BYTES = 16 * 1024 * 1024  # imagecache.json and oci/index.json

SERVED, REFUSED, BROKEN = "served", "refused", "broken"


@dataclass(frozen=True, slots=True)
class Disk:
    path: str  # the directory holding imagecache.json, as found
    real: str  # its resolved path: every file served must be below it
    stamp: Stamp
    built: float  # mtime of imagecache.json
    state: str  # SERVED, REFUSED (credentials) or BROKEN
    reason: str = ""
    manifest: CacheManifest | None = None
    index: DiskIndex | None = None


def _stat_key(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def stamp_of(path: str) -> Stamp | None:
    """Cheap identity of a disk: two stats; None when it is not (or no longer) a cache disk."""
    try:
        described = os.stat(os.path.join(path, MANIFEST_FILE))
    except OSError:
        return None
    if not stat.S_ISREG(described.st_mode):
        return None
    try:
        layout: Stamp = _stat_key(os.stat(os.path.join(path, OCI_DIR, "index.json")))
    except OSError:
        layout = ()
    return _stat_key(described) + layout


def _read_small(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} is larger than {limit} bytes")
    return data


def open_blob(disk_real: str, digest: str) -> tuple[int, int] | None:
    """(fd, size) of a blob below `disk_real`, or None. The digest is validated before a path
    is built, and the resolved path must stay inside the disk (no symlink out of it)."""
    try:
        relative = blob_path(digest)
    except ValueError:
        return None
    real = os.path.realpath(os.path.join(disk_real, relative))
    if not real.startswith(disk_real.rstrip(os.sep) + os.sep):
        log.warning("refused %s on %s: its path leaves the disk", digest, disk_real)
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st.st_size


def _blob_reader(disk_real: str) -> ReadBlob:
    def read(digest: str) -> bytes | None:
        opened = open_blob(disk_real, digest)
        if opened is None:
            return None
        fd, size = opened
        try:
            if size > MAX_MANIFEST_BYTES:
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(MAX_MANIFEST_BYTES + 1)
        finally:
            os.close(fd)

    return read


def load_disk(path: str, stamp: Stamp) -> Disk:
    """Read and index one disk; a disk that cannot be used is returned BROKEN with why."""
    real = os.path.realpath(path)
    try:
        built = os.stat(os.path.join(path, MANIFEST_FILE)).st_mtime
        manifest = parse_manifest(_read_small(os.path.join(path, MANIFEST_FILE),
                                              MAX_DESCRIPTION_BYTES))
    except (OSError, InvalidCacheManifest) as exc:
        return Disk(path, real, stamp, 0.0, BROKEN, str(exc))
    if not manifest.mirror_may_serve:
        return Disk(path, real, stamp, built, REFUSED,
                    f"cache {manifest.name!r} was built with credentials and does not allow "
                    "the node mirror to serve it (serveCredentialed is false)", manifest)
    try:
        index_json = _read_small(os.path.join(path, OCI_DIR, "index.json"),
                                 MAX_DESCRIPTION_BYTES)
        index = build_disk_index(index_json, _blob_reader(real))
    except (OSError, InvalidLayout) as exc:
        return Disk(path, real, stamp, built, BROKEN, str(exc), manifest)
    return Disk(path, real, stamp, built, SERVED, "", manifest, index)


class DiskWatcher:
    def __init__(self, root: str, globs: Sequence[str], depth: int) -> None:
        self.root = root
        self.globs = tuple(globs)
        self.depth = depth
        self.disks: dict[str, Disk] = {}
        self.index = NodeIndex()
        self._root_missing_logged = False

    def candidates(self) -> list[str]:
        """Directories that hold imagecache.json: the globs, then a walk up to depth."""
        found: set[str] = set()
        if not os.path.isdir(self.root):
            if not self._root_missing_logged:
                log.warning("--root %s does not exist (yet): no cache disks", self.root)
                self._root_missing_logged = True
            return []
        self._root_missing_logged = False
        for pattern in self.globs:
            for match in glob.glob(os.path.join(glob.escape(self.root), pattern)):
                if os.path.isfile(os.path.join(match, MANIFEST_FILE)):
                    found.add(os.path.normpath(match))
        self._walk(self.root, 0, found)
        return sorted(found)

    def _walk(self, directory: str, level: int, found: set[str]) -> None:
        if os.path.isfile(os.path.join(directory, MANIFEST_FILE)):
            found.add(os.path.normpath(directory))
            return  # a cache disk's own directories are not searched
        if level >= self.depth:
            return
        try:
            with os.scandir(directory) as entries:
                subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for sub in subdirs:
            self._walk(sub, level + 1, found)

    def refresh(self) -> bool:
        """One poll; True when the set of disks or their content changed."""
        seen: dict[str, Stamp] = {}
        for path in self.candidates():
            stamp = stamp_of(path)
            if stamp is not None:
                seen[path] = stamp
        plan = plan_refresh({p: d.stamp for p, d in self.disks.items()}, seen)
        if not plan.changed:
            return False
        # Built aside and swapped in whole: requests and counts() read without a lock.
        disks = dict(self.disks)
        for path in plan.drop:
            log.info("cache disk gone: %s", path)
            del disks[path]
        for path in plan.load:
            disk = load_disk(path, seen[path])
            disks[path] = disk
            name = disk.manifest.name if disk.manifest else "?"
            if disk.state == SERVED:
                assert disk.index is not None
                log.info("cache disk %s (cache %s): serving %d repositories", path, name,
                         len(disk.index.repos))
                for problem in disk.index.problems:
                    log.warning("cache disk %s: %s", path, problem)
            else:
                log.warning("cache disk %s (cache %s) not served: %s", path, name, disk.reason)
        served = {p: d.built for p, d in disks.items() if d.index is not None}
        # Disk ids in the index are resolved paths: the server opens blobs below them.
        self.index = NodeIndex(
            [(disks[p].real, index) for p in disk_order(served)
             if (index := disks[p].index) is not None]
        )
        self.disks = disks
        return True

    def counts(self) -> dict[str, int]:
        out = {SERVED: 0, REFUSED: 0, BROKEN: 0}
        for disk in self.disks.values():
            out[disk.state] += 1
        return out
