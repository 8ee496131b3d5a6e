"""The node snapshotter's decisions over plain data: snapshot kinds and errors, the mounts of
a snapshot, label updates, List filters, and where a layer comes from (DESIGN.md, "Node
snapshotter"). containerd's overlay snapshotter is the reference for every rule here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

# The label containerd's unpacker puts on the Prepare of a layer: the chain ID the committed
# layer will be named by. A snapshotter that already has it answers ALREADY_EXISTS.
TARGET_REF_LABEL = "containerd.io/snapshot.ref"
# Ours, on a disk-backed committed snapshot: which layer directory serves it.
SOURCE_LABEL = "imagecache.dev/layer"
MAX_LABEL_BYTES = 4096


class Kind(IntEnum):  # the proto's numbering
    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


class SnapshotError(Exception):
    """An error containerd maps to an errdefs class by its gRPC code."""

    code = "UNKNOWN"


class NotFound(SnapshotError):
    code = "NOT_FOUND"


class AlreadyExists(SnapshotError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(SnapshotError):
    code = "FAILED_PRECONDITION"


class InvalidArgument(SnapshotError):
    code = "INVALID_ARGUMENT"


@dataclass(frozen=True, slots=True)
class Info:
    id: int
    name: str  # the key of an active/view snapshot, the name of a committed one
    parent: str
    kind: Kind
    created: float
    updated: float
    labels: Mapping[str, str]
    size: int = 0  # bytes, measured at commit
    inodes: int = 0
    source: str = ""  # chain ID hex of a disk-backed layer; "" for one stored in the root


@dataclass(frozen=True, slots=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...]


def check_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise InvalidArgument(f"label {key[:64]!r}: key and value together exceed "
                                  f"{MAX_LABEL_BYTES} bytes")


def mounts_for(kind: Kind, own_dir: str, work_dir: str, lowers: Sequence[str]) -> list[Mount]:
    """What containerd mounts for a snapshot: `lowers` are the parents' directories, the
    nearest first (containerd's overlay snapshotter's rules)."""
    if not lowers:
        # An active snapshot without parents is its own directory, bound read-write; a view
        # without parents is an empty directory, bound read-only.
        mode = "ro" if kind == Kind.VIEW else "rw"
        return [Mount("bind", own_dir, (mode, "rbind"))]
    if kind == Kind.VIEW:
        if len(lowers) == 1:
            return [Mount("bind", lowers[0], ("ro", "rbind"))]
        return [Mount("overlay", "overlay", ("index=off", f"lowerdir={':'.join(lowers)}"))]
    return [Mount("overlay", "overlay", ("index=off", f"workdir={work_dir}",
                                         f"upperdir={own_dir}",
                                         f"lowerdir={':'.join(lowers)}"))]


def updated_labels(current: Mapping[str, str], new: Mapping[str, str],
                   paths: Sequence[str]) -> dict[str, str]:
    """Update's field mask: empty or `labels` replaces them all, `labels.K` sets or removes
    one; other fields are immutable (containerd: name, parent, kind, created)."""
    if not paths:
        return dict(new)
    labels = dict(current)
    for path in paths:
        if path == "labels":
            labels = dict(new)
        elif path.startswith("labels."):
            key = path[len("labels."):]
            if key in new:
                labels[key] = new[key]
            else:
                labels.pop(key, None)
        else:
            raise InvalidArgument(f"cannot update {path!r} of a snapshot: only labels can "
                                  "change")
    return labels


_TERM = re.compile(
    r'\s*(?P<field>labels\.(?:"(?:[^"\\]|\\.)*"|[\w./-]+)|name|parent|kind)\s*'
    r'(?P<op>==|!=)\s*(?P<value>"(?:[^"\\]|\\.)*"|[^,]*)\s*$')


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _split(text: str) -> list[str]:
    """Split on commas outside double quotes."""
    parts, current, quoted, escaped = [], "", False, False
    for char in text:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            current, escaped = current + char, True
        elif char == '"':
            current, quoted = current + char, not quoted
        elif char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _field(info: Info, field: str) -> str | None:
    if field.startswith("labels."):
        return info.labels.get(_unquote(field[len("labels."):]))
    kinds = {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}
    return {"name": info.name, "parent": info.parent,
            "kind": kinds.get(info.kind, "unknown")}[field]


def matches(info: Info, filters: Sequence[str]) -> bool:
    """containerd's filter syntax, the part snapshot Walks use: any filter matches (OR),
    within one the comma-separated terms all match (AND); `==` and `!=` on name, parent,
    kind and labels."K". A term outside that is refused, never silently ignored."""
    if not filters:
        return True
    for text in filters:
        ok = True
        for term in _split(text):
            found = _TERM.match(term)
            if found is None:
                raise InvalidArgument(f"filter term {term!r} is not supported (supported: "
                                      'name, parent, kind, labels."K" with == or !=)')
            value = _field(info, found["field"])
            want = _unquote(found["value"])
            if (value == want) != (found["op"] == "=="):
                ok = False
        if ok:
            return True
    return False


# ------------------------------------------------------------------ whose disk

# Set by CRI on layer Prepares when `disable_snapshot_annotations = false` (configure sets it):
# the image a disk-backed layer belongs to, removed when the layer is gone ("never dangling").
CRI_IMAGE_REF_LABEL = "containerd.io/snapshot/cri.image-ref"
NAMESPACE_LABEL = "imagecache.dev/namespace"


def split_key(key: str) -> tuple[str, str]:
    """containerd's metadata layer names backend snapshots `<namespace>/<seq>/<key>`; CRI's
    container snapshots are keyed by the container ID. ("", key) for any other form."""
    parts = key.split("/", 2)
    if len(parts) == 3 and parts[0] and parts[1].isdigit():
        return parts[0], parts[2]
    return "", key


class Use(IntEnum):
    COPY = 1  # the layer's copy in the snapshotter's root
    DISK = 2  # a cache disk (the container's own pod's, or any for a short-lived mount)
    WAIT = 3  # copy it (or wait for the copy under way) from `path`, then use the copy
    GONE = 4  # neither on a mounted disk nor copied: the image must be pulled again


@dataclass(frozen=True, slots=True)
class LayerChoice:
    use: Use
    path: str = ""


def choose_layer(copied: str, sources: Sequence[tuple[str, str]],
                 pod_uid: str | None) -> LayerChoice:
    """Where a disk-backed layer is mounted from. `copied`: the copy's path if it exists;
    `sources`: (pod uid, layer path) of the mounted disks holding it; `pod_uid`: the pod of
    the container being mounted, None when unknown (containerd's own short mounts at create
    time, before the container exists). A container never gets another pod's disk: a
    running container would keep that disk's filesystem alive after its pod is gone."""
    if copied:
        return LayerChoice(Use.COPY, copied)
    if not sources:
        return LayerChoice(Use.GONE)
    if pod_uid is None:
        return LayerChoice(Use.DISK, sources[0][1])
    own = [path for uid, path in sources if uid and uid == pod_uid]
    if own:
        return LayerChoice(Use.DISK, own[0])
    return LayerChoice(Use.WAIT, sources[0][1])
