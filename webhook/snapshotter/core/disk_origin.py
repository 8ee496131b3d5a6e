"""Whether a cache disk mounted on the node may lend its layers to the node snapshotter: its
origin, proven by the API objects behind the volume (DESIGN.md, "Node snapshotter").

The snapshotter takes a layer directory by its name (a chain ID) without hashing it, so a
layer is only as good as the volume that holds it. A pod could mount a volume of its own
that looks like a cache disk (imagecache.json, layers/<chain ID>/) and plant a layer that
other namespaces' pods would then run. A disk is trusted only when:

- its path is the kubelet's mount of a PersistentVolume of a pod,
  `<pod uid>/volumes/kubernetes.io~csi/<pv>/mount` or `.../kubernetes.io~local-volume/<pv>`
  (an emptyDir, hostPath or inline CSI volume is named by the pod's author, not by a PV);
- the PV and its claim are bound to each other, and either
- (a clone) the claim is ReadWriteOnce(Pod) only, cloned
  from a VolumeSnapshot of its own namespace that is bound to a VolumeSnapshotContent the
  controller made (cluster-scoped: tenants cannot make one) and that names that snapshot
  back, or, in the controller's namespace (where tenants write nothing), the controller's
  primary snapshot; owned by the pod whose uid the path holds (a generic ephemeral volume, as
  the webhook adds it), which mounts it read-only wherever it mounts it and has no other
  volume named like the PV;
- or (the builder's own disk) the claim is the controller's, in the controller's namespace.

The webhook's `imagecache.dev/cache` label on the claim is not required: anyone can set it,
and the webhook leaves it off for cache names longer than a label value; the proof is the
VolumeSnapshotContent, which only the controller (or a cluster admin) makes.

`judge` is a step function: given the objects read so far, it names the next one to read
or gives the verdict, so the shell only performs reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.core import names

Obj = Mapping[str, Any]

# Kubelet volume plugins whose directory under a pod is named by a PersistentVolume.
PV_PLUGINS = ("kubernetes.io~csi", "kubernetes.io~local-volume")
SINGLE_NODE_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})

PV, PVC, POD, SNAPSHOT, CONTENT = "pv", "pvc", "pod", "snapshot", "content"


@dataclass(frozen=True, slots=True)
class Volume:
    pod_uid: str
    plugin: str
    pv: str


@dataclass(frozen=True, slots=True)
class Read:
    """The next object to read: `kind` one of PV, PVC, POD, SNAPSHOT, CONTENT."""

    kind: str
    namespace: str  # "" for cluster-scoped objects
    name: str


@dataclass(frozen=True, slots=True)
class Verdict:
    trusted: bool
    reason: str  # why not (or what it is, when trusted)


def volume_of(relative: str) -> Volume | None:
    """The pod and PV of a disk path relative to the kubelet's pods directory, or None when
    the path is not the kubelet's mount of a PersistentVolume."""
    parts = relative.strip("/").split("/")
    if len(parts) == 5 and parts[2] == "kubernetes.io~csi" and parts[4] == "mount":
        parts = parts[:4]  # a CSI volume's content is in its mount/ directory
    elif not (len(parts) == 4 and parts[2] == "kubernetes.io~local-volume"):
        return None
    if parts[1] != "volumes" or not all(parts) or any(p in (".", "..") for p in parts):
        return None
    return Volume(parts[0], parts[2], parts[3])


def shared_volumes(volumes: Iterable[Volume]) -> frozenset[str]:
    """PVs mounted on this node by more than one pod: a second pod may write to the disk."""
    pods: dict[str, set[str]] = {}
    for volume in volumes:
        pods.setdefault(volume.pv, set()).add(volume.pod_uid)
    return frozenset(pv for pv, uids in pods.items() if len(uids) > 1)


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _labels(obj: Obj) -> Obj:
    return _meta(obj).get("labels") or {}


def _controller_made(obj: Obj) -> bool:
    return _labels(obj).get(names.MANAGED_BY) == names.MANAGER


def _refused(reason: str) -> Verdict:
    return Verdict(False, reason)


def _pod_volumes_of(pod: Obj, claim: str) -> list[Obj]:
    """The pod's volumes that are this claim: a generic ephemeral volume (claim
    `<pod>-<volume>`) or a persistentVolumeClaim reference."""
    pod_name = _meta(pod).get("name", "")
    return [v for v in (pod.get("spec") or {}).get("volumes") or []
            if (v.get("ephemeral") is not None and f"{pod_name}-{v.get('name')}" == claim)
            or (v.get("persistentVolumeClaim") or {}).get("claimName") == claim]


def _writable_mount(pod: Obj, volumes: list[Obj]) -> str:
    """The container that mounts one of `volumes` writable, or ""."""
    by_name = {v.get("name"): v for v in volumes}
    spec = pod.get("spec") or {}
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            for mount in container.get("volumeMounts") or []:
                volume = by_name.get(mount.get("name"))
                if volume is None:
                    continue
                if not (mount.get("readOnly")
                        or (volume.get("persistentVolumeClaim") or {}).get("readOnly")):
                    return str(container.get("name", "?"))
    return ""


def _judge_pod(volume: Volume, claim: Obj, pod: Obj) -> Verdict | None:
    claim_name = _meta(claim).get("name", "")
    if _meta(pod).get("uid") != volume.pod_uid:
        return _refused(f"its claim's owner pod is not the pod {volume.pod_uid} that mounts it")
    if any(v.get("name") == volume.pv for v in (pod.get("spec") or {}).get("volumes") or []):
        return _refused(f"the pod has a volume named like the PV {volume.pv}")
    mine = _pod_volumes_of(pod, claim_name)
    if not mine:
        return _refused(f"the pod has no volume for claim {claim_name}")
    writer = _writable_mount(pod, mine)
    if writer:
        return _refused(f"container {writer} mounts it writable")
    return None


def _snapshot_source(claim: Obj) -> tuple[str, str] | None:
    """(namespace, name) of the VolumeSnapshot the claim was cloned from, or None."""
    spec = claim.get("spec") or {}
    namespace = _meta(claim).get("namespace", "")
    for key in ("dataSourceRef", "dataSource"):
        source = spec.get(key) or {}
        if source.get("kind") == "VolumeSnapshot" and source.get(
                "apiGroup") == names.SNAPSHOT_GROUP and source.get("name"):
            return str(source.get("namespace") or namespace), str(source["name"])
    return None


def _judge_content(claim: Obj, snapshot: Obj, content: Obj) -> Verdict:
    ref = (content.get("spec") or {}).get("volumeSnapshotRef") or {}
    if not _controller_made(content):
        return _refused(f"VolumeSnapshotContent {_meta(content).get('name')} was not made by "
                        "the imagecache controller")
    if (ref.get("namespace"), ref.get("name")) != (_meta(snapshot).get("namespace"),
                                                   _meta(snapshot).get("name")):
        return _refused(f"VolumeSnapshotContent {_meta(content).get('name')} belongs to "
                        f"another snapshot ({ref.get('namespace')}/{ref.get('name')})")
    return Verdict(True, f"claim {_meta(claim).get('namespace')}/{_meta(claim).get('name')}"
                   f" cloned from the controller's snapshot {_meta(snapshot).get('name')}")


def shared_refusal(volume: Volume) -> Verdict:
    """The verdict on a disk whose PV another pod on this node mounts too (shared_volumes),
    whatever the API says: that pod may write to it."""
    return _refused(f"PV {volume.pv} is mounted by more than one pod on this node")


def judge(volume: Volume, facts: Mapping[str, Obj | None],
          controller_namespace: str) -> Read | Verdict:
    """The next read, or the verdict. `facts` maps PV, PVC, ... to the object read (None:
    it does not exist)."""
    if PV not in facts:
        return Read(PV, "", volume.pv)
    pv = facts[PV]
    if pv is None:
        return _refused(f"no PersistentVolume {volume.pv}")
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    if not ref.get("namespace") or not ref.get("name"):
        return _refused(f"PV {volume.pv} is bound to no claim")
    if PVC not in facts:
        return Read(PVC, str(ref["namespace"]), str(ref["name"]))
    claim = facts[PVC]
    claim_ns = str(ref["namespace"])
    if claim is None:
        return _refused(f"PV {volume.pv}'s claim {claim_ns}/{ref['name']} does not exist")
    if (claim.get("spec") or {}).get("volumeName") != volume.pv or (
            ref.get("uid") and ref.get("uid") != _meta(claim).get("uid")):
        return _refused(f"PV {volume.pv} and claim {claim_ns}/{ref['name']} are not bound "
                        "to each other")
    if controller_namespace and claim_ns == controller_namespace and _controller_made(claim):
        return Verdict(True, f"the builder's disk {claim_ns}/{ref['name']}")
    modes = set((claim.get("spec") or {}).get("accessModes") or [])
    if not modes or not modes <= SINGLE_NODE_MODES:
        return _refused(f"claim {claim_ns}/{ref['name']} may be mounted on several nodes "
                        f"({', '.join(sorted(modes)) or 'no access modes'})")
    owners = [o for o in _meta(claim).get("ownerReferences") or []
              if o.get("kind") == "Pod" and o.get("controller")]
    if not owners or owners[0].get("uid") != volume.pod_uid:
        return _refused(f"claim {claim_ns}/{ref['name']} is not the ephemeral volume of the "
                        f"pod {volume.pod_uid} that mounts it")
    if POD not in facts:
        return Read(POD, claim_ns, str(owners[0].get("name", "")))
    pod = facts[POD]
    if pod is None:
        return _refused(f"pod {claim_ns}/{owners[0].get('name')} does not exist")
    refused = _judge_pod(volume, claim, pod)
    if refused is not None:
        return refused
    source = _snapshot_source(claim)
    if source is None or source[0] != claim_ns:
        return _refused(f"claim {claim_ns}/{ref['name']} is not cloned from a VolumeSnapshot "
                        "of its namespace")
    if SNAPSHOT not in facts:
        return Read(SNAPSHOT, *source)
    snapshot = facts[SNAPSHOT]
    if snapshot is None:
        return _refused(f"VolumeSnapshot {source[0]}/{source[1]} does not exist")
    if controller_namespace and claim_ns == controller_namespace and _controller_made(snapshot):
        return Verdict(True, f"claim {claim_ns}/{ref['name']} cloned from the controller's "
                       f"primary snapshot {source[1]}")
    bound = (snapshot.get("status") or {}).get("boundVolumeSnapshotContentName")
    if not bound:
        return _refused(f"VolumeSnapshot {source[0]}/{source[1]} is bound to no content")
    if CONTENT not in facts:
        return Read(CONTENT, "", str(bound))
    content = facts[CONTENT]
    if content is None:
        return _refused(f"VolumeSnapshotContent {bound} does not exist")
    return _judge_content(claim, snapshot, content)
