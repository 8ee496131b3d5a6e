"""A stand-in, in the tests only, for the one component these machines lack: a CSI driver
with snapshots (and its external-snapshotter / snapshot controller).

Everything else on the node is real; this plays exactly what the missing parts would do, at
the API boundary, with real files:
- a VolumeSnapshot of a PVC (the primary, made by the controller after a build): the bound
  PV's directory is copied to DIR/csi/snapshots/<handle>, a VolumeSnapshotContent is created
  for it, and both are marked ready (status.readyToUse, snapshotHandle, restoreSize);
- a pre-provisioned VolumeSnapshot (the controller's per-namespace copy, bound to a content
  with source.snapshotHandle): both are marked ready;
- a PVC cloned from a VolumeSnapshot (a pod's ephemeral `<pod>-imagecache` claim): a local PV
  pre-bound (claimRef) to it, holding a copy of the snapshot (hard links, as a copy-on-write
  clone would share blocks; the volume is mounted read-only);
- a Released clone PV: deleted with its directory (the driver's Delete reclaim); a Released
  static build PV: wiped and offered again (as the local static provisioner does).
It polls the API every 0.3 s in a thread and records what it did and any error it met.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node_harness import Api, local_pv

DRIVER = "standin.csi.imagecache.test"
SNAP = "/apis/snapshot.storage.k8s.io/v1"
CLONE_PREFIX = "standin-clone-"
BUILD_PV_LABEL = "imagecache-test/build-pv"
# Static build PVs wait pre-bound to this (absent) claim, so that no other claim of the class
# (a pod's clone above all) can take one; the stand-in hands one to each build claim.
RESERVED = "imagecache-build-reserved"
Obj = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@dataclass
class CsiStandIn:
    api: Api
    root: Path  # DIR/csi
    storage_class: str
    namespace: str  # the controller's: build claims live there
    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    paused: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> CsiStandIn:
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)
        (self.root / "clones").mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="csi-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.paused.is_set():
                try:
                    self.sync()
                except Exception:  # keep serving; the test reads self.errors on failure
                    self.errors.append(traceback.format_exc(limit=3))
                    del self.errors[:-20]
            self._stop.wait(0.3)

    # --- one pass ----------------------------------------------------------------------------

    def sync(self) -> None:
        contents = {
            c["metadata"]["name"]: c for c in self.api.items(f"{SNAP}/volumesnapshotcontents")
        }
        for snap in self.api.items(f"{SNAP}/volumesnapshots"):
            if (snap.get("status") or {}).get("readyToUse") is True:
                continue
            if snap["metadata"].get("deletionTimestamp"):
                continue
            source = snap["spec"].get("source") or {}
            if source.get("persistentVolumeClaimName"):
                self._snapshot_pvc(snap, source["persistentVolumeClaimName"])
            elif source.get("volumeSnapshotContentName") in contents:
                self._bind_copy(snap, contents[source["volumeSnapshotContentName"]])
        for pvc in self.api.items("/api/v1/persistentvolumeclaims"):
            if (pvc.get("status") or {}).get("phase") != "Pending":
                continue
            data = pvc["spec"].get("dataSource") or {}
            if not data and pvc["spec"].get("storageClassName") == self.storage_class:
                self._hand_build_pv(pvc)
            if data.get("kind") == "VolumeSnapshot":
                self._clone(pvc, data["name"])
        for pv in self.api.items("/api/v1/persistentvolumes"):
            if (pv.get("status") or {}).get("phase") == "Released":
                self._reclaim(pv)

    def _hand_build_pv(self, pvc: Obj) -> None:
        meta = pvc["metadata"]
        pvs = self.api.items(f"/api/v1/persistentvolumes?labelSelector={BUILD_PV_LABEL}%3Dtrue")
        if any((pv["spec"].get("claimRef") or {}).get("uid") == meta["uid"] for pv in pvs):
            return
        free = [
            pv
            for pv in pvs
            if (pv["spec"].get("claimRef") or {}).get("name") == RESERVED
            and (pv.get("status") or {}).get("phase") == "Available"
        ]
        if not free:
            self.errors.append(f"no free static build PV for {meta['namespace']}/{meta['name']}")
            return
        name = sorted(pv["metadata"]["name"] for pv in free)[0]
        self.api.merge_patch(
            f"/api/v1/persistentvolumes/{name}",
            {
                "spec": {
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    }
                }
            },
        )
        self.done.append(f"build PV {name} for {meta['namespace']}/{meta['name']}")

    def _reclaim(self, pv: Obj) -> None:
        """A clone: deleted with its directory (the driver's Delete). A static build PV:
        wiped and offered again, as the local static provisioner does."""
        name, path = pv["metadata"]["name"], Path(pv["spec"]["local"]["path"])
        if name.startswith(CLONE_PREFIX):
            self.api.delete(f"/api/v1/persistentvolumes/{name}")
            shutil.rmtree(path, ignore_errors=True)
            self.done.append(f"deleted clone {name}")
        elif (pv["metadata"].get("labels") or {}).get(BUILD_PV_LABEL) == "true":
            self.api.delete(f"/api/v1/persistentvolumes/{name}")
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            path.chmod(0o777)
            fresh = build_pv(name, path, pv["spec"]["storageClassName"], self.namespace)
            for _ in range(50):  # the old object may linger for a moment (pv-protection)
                if self.api.get(f"/api/v1/persistentvolumes/{name}") is None:
                    break
                time.sleep(0.1)
            self.api.create("/api/v1/persistentvolumes", fresh)
            self.done.append(f"recycled build PV {name}")

    def _snapshot_pvc(self, snap: Obj, claim: str) -> None:
        ns, name, uid = (
            snap["metadata"]["namespace"],
            snap["metadata"]["name"],
            snap["metadata"]["uid"],
        )
        pvc = self.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        if not pvc or not pvc["spec"].get("volumeName"):
            return  # not bound yet: a real driver would wait as well
        pv = self.api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        if not pv or "local" not in pv["spec"]:
            return
        handle = f"snap-{uid}"
        target = self.root / "snapshots" / handle
        if not target.exists():
            tmp = target.with_name(handle + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["cp", "-a", pv["spec"]["local"]["path"], str(tmp)], check=True)
            tmp.rename(target)
        size = (
            pvc["status"].get("capacity", {}).get("storage")
            or pvc["spec"]["resources"]["requests"]["storage"]
        )
        content = f"snapcontent-{uid}"
        self.api.create(
            f"{SNAP}/volumesnapshotcontents",
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": content},
                "spec": {
                    "driver": DRIVER,
                    "deletionPolicy": "Delete",
                    "source": {"volumeHandle": pv["metadata"]["name"]},
                    "volumeSnapshotClassName": snap["spec"].get("volumeSnapshotClassName"),
                    "volumeSnapshotRef": {"name": name, "namespace": ns, "uid": uid},
                },
            },
        )
        self._ready_content(content, handle, size)
        self._ready_snapshot(ns, name, content, size)
        self.done.append(f"snapshot {ns}/{name} of {claim} -> {handle}")

    def _bind_copy(self, snap: Obj, content: Obj) -> None:
        ns, name = snap["metadata"]["namespace"], snap["metadata"]["name"]
        handle = (content["spec"].get("source") or {}).get("snapshotHandle")
        if not handle:
            return
        size = self._restore_size(handle)
        if size is None:
            return
        self._ready_content(content["metadata"]["name"], handle, size)
        self._ready_snapshot(ns, name, content["metadata"]["name"], size)
        self.done.append(f"copy {ns}/{name} -> {handle}")

    def _restore_size(self, handle: str) -> str | None:
        for content in self.api.items(f"{SNAP}/volumesnapshotcontents"):
            status = content.get("status") or {}
            if status.get("snapshotHandle") == handle and status.get("restoreSize"):
                return f"{int(status['restoreSize']) >> 30}Gi"
        return None

    def _ready_content(self, name: str, handle: str, size: str) -> None:
        self.api.merge_patch(
            f"{SNAP}/volumesnapshotcontents/{name}/status",
            {
                "status": {
                    "snapshotHandle": handle,
                    "readyToUse": True,
                    "restoreSize": _bytes(size),
                    "creationTime": time.time_ns(),
                }
            },
        )

    def _ready_snapshot(self, ns: str, name: str, content: str, size: str) -> None:
        self.api.merge_patch(
            f"{SNAP}/namespaces/{ns}/volumesnapshots/{name}/status",
            {
                "status": {
                    "boundVolumeSnapshotContentName": content,
                    "readyToUse": True,
                    "restoreSize": size,
                    "creationTime": _now(),
                }
            },
        )

    def _clone(self, pvc: Obj, snapshot: str) -> None:
        ns, name, uid = (
            pvc["metadata"]["namespace"],
            pvc["metadata"]["name"],
            pvc["metadata"]["uid"],
        )
        pv_name = CLONE_PREFIX + uid
        if self.api.get(f"/api/v1/persistentvolumes/{pv_name}") is not None:
            return
        snap = self.api.get(f"{SNAP}/namespaces/{ns}/volumesnapshots/{snapshot}")
        content_name = ((snap or {}).get("status") or {}).get("boundVolumeSnapshotContentName")
        if not content_name:
            return
        content = self.api.get(f"{SNAP}/volumesnapshotcontents/{content_name}") or {}
        handle = (content.get("status") or {}).get("snapshotHandle")
        source = self.root / "snapshots" / str(handle)
        if not handle or not source.is_dir():
            return
        target = self.root / "clones" / uid
        if not target.exists():
            tmp = target.with_name(uid + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["cp", "-al", str(source), str(tmp)], check=True)
            tmp.rename(target)
        size = pvc["spec"]["resources"]["requests"]["storage"]
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": ns,
            "name": name,
            "uid": uid,
        }
        pv = local_pv(
            pv_name, target, pvc["spec"].get("storageClassName") or self.storage_class, size, claim
        )
        with contextlib.suppress(Exception):
            self.api.create("/api/v1/persistentvolumes", pv)
            self.done.append(f"clone {ns}/{name} from {snapshot} ({handle})")


def build_pv(name: str, path: Path, storage_class: str, namespace: str) -> Obj:
    """A static local PV for build disks, reserved (see RESERVED) until a build claims it."""
    pv = local_pv(
        name,
        path,
        storage_class,
        claim={
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": namespace,
            "name": RESERVED,
        },
    )
    pv["metadata"]["labels"] = {BUILD_PV_LABEL: "true"}
    return pv
