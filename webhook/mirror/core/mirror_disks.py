"""Which cache disks the node mirror (re)loads, drops and prefers: pure planning.

The shell polls once a second and stats two files per candidate directory; a `Stamp` is what
those stats say (device, inode, mtime, size of imagecache.json and oci/index.json). A disk
is reloaded only when its stamp changes: a new mount has another device, a rebuilt layout
another mtime; it is dropped when the files are gone (kubelet unmounted it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Stamp = tuple[int, ...]

# Default kubelet layout of a CSI volume: <pods>/<pod-uid>/volumes/kubernetes.io~csi/<pv>/mount
KUBELET_CSI_GLOB = "*/volumes/kubernetes.io~csi/*/mount"


@dataclass(frozen=True, slots=True)
class RefreshPlan:
    load: tuple[str, ...]  # new, or changed since loaded
    drop: tuple[str, ...]  # gone
    keep: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.load or self.drop)


def plan_refresh(known: Mapping[str, Stamp], seen: Mapping[str, Stamp]) -> RefreshPlan:
    """Compare what was loaded (`known`) with what the poll found (`seen`), by path."""
    load = sorted(path for path, stamp in seen.items() if known.get(path) != stamp)
    drop = sorted(path for path in known if path not in seen)
    keep = sorted(path for path, stamp in seen.items() if known.get(path) == stamp)
    return RefreshPlan(tuple(load), tuple(drop), tuple(keep))


def disk_order(built: Mapping[str, float]) -> list[str]:
    """Disks by preference: the most recently built first (its tags are the freshest), then
    by path so that the order never depends on the poll."""
    return sorted(built, key=lambda path: (-built[path], path))
