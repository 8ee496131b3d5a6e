"""Which members of a layer tar the builder may write under `/layers/<chainID>/`, and how.

Pure: one `LayerCheck` per layer sees the members in archive order and answers, for each,
what to do with it, or raises `LayerRefused` naming the member and the rule it breaks. The
unpacker (webhook.builder.unpack) still opens every path component without following
symlinks; these rules are what makes a refusal a clear message instead of an OS error.

OCI whiteouts become what overlayfs reads: `.wh.NAME` a 0:0 character device `NAME`,
`.wh..wh..opq` the opaque mark on its directory (DESIGN.md, "The cache disk").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Generous for real images (a full distro layer has ~50k members), small enough that a tar
# of empty entries cannot fill the disk's inodes or the builder's memory.
MAX_MEMBERS = 2_000_000
MAX_LAYER_BYTES = 1 << 40
MAX_PATH = 4096
MAX_COMPONENT = 255


class LayerRefused(ValueError):
    """A member the builder will not write; the message names it and the rule."""


class Kind(StrEnum):
    FILE = "file"
    DIR = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    FIFO = "fifo"
    CHAR = "character device"
    BLOCK = "block device"
    OTHER = "unknown type"


class Do(StrEnum):
    WRITE = "write"  # create the member at `path` (its kind says how)
    WHITEOUT = "whiteout"  # a 0:0 character device at `path`
    OPAQUE = "opaque"  # mark the directory `path` opaque (() is the layer root)
    SKIP = "skip"  # nothing to write (the root entry, aufs metadata)


Path = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    kind: Kind
    size: int = 0
    linkname: str = ""


@dataclass(frozen=True, slots=True)
class Action:
    do: Do
    path: Path
    kind: Kind = Kind.FILE
    link: Path = ()  # a hard link's target, relative to the layer root


def split_path(name: str, what: str = "path") -> Path:
    """Components of an archive path, relative to the layer root; refuse what could leave it."""
    if "\0" in name:
        raise LayerRefused(f"{what} {name!r} contains a NUL byte")
    if len(name.encode(errors="surrogateescape")) > MAX_PATH:
        raise LayerRefused(f"{what} {name[:64]!r}... is longer than {MAX_PATH} bytes")
    if name.startswith("/"):
        raise LayerRefused(f"{what} {name!r} is absolute; layer members must be relative")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise LayerRefused(f"{what} {name!r} contains '..', which could leave the layer")
    for part in parts:
        if len(part.encode(errors="surrogateescape")) > MAX_COMPONENT:
            raise LayerRefused(f"{what} {name!r}: a component is longer than {MAX_COMPONENT} "
                               "bytes")
    return parts


def _show(path: Path) -> str:
    return "/".join(path) or "."


@dataclass
class LayerCheck:
    """The rules for one layer, applied member by member in archive order."""

    layer: str  # names the layer in messages (its digest)
    max_members: int = MAX_MEMBERS
    max_bytes: int = MAX_LAYER_BYTES
    members: int = 0
    bytes: int = 0
    _kinds: dict[Path, Kind] = field(default_factory=dict)  # what each path is so far

    def _refuse(self, member: Member, why: str) -> LayerRefused:
        return LayerRefused(f"layer {self.layer}: member {member.name!r} ({member.kind}) {why}")

    def _check_parents(self, member: Member, path: Path) -> None:
        for n in range(1, len(path)):
            kind = self._kinds.get(path[:n])
            if kind is None:
                self._kinds[path[:n]] = Kind.DIR  # implied by its child
            elif kind != Kind.DIR:
                raise self._refuse(member, f"lies under {_show(path[:n])!r}, which is a {kind} "
                                   "in this layer; writing it would follow that entry")

    def _record(self, member: Member, path: Path, kind: Kind) -> None:
        before = self._kinds.get(path)
        if before is not None and not (before == Kind.DIR and kind == Kind.DIR):
            raise self._refuse(member, f"names {_show(path)!r} again (already a {before} in "
                               "this layer); duplicate names are refused")
        self._kinds[path] = kind

    def admit(self, member: Member) -> Action:
        self.members += 1
        if self.members > self.max_members:
            raise LayerRefused(f"layer {self.layer}: more than {self.max_members} members")
        self.bytes += max(member.size, 0)
        if self.bytes > self.max_bytes:
            raise LayerRefused(f"layer {self.layer}: unpacks to more than {self.max_bytes} bytes")
        try:
            path = split_path(member.name)
        except LayerRefused as exc:
            raise LayerRefused(f"layer {self.layer}: {exc}") from None
        if not path:
            return Action(Do.SKIP, ())
        base, parent = path[-1], path[:-1]
        if any(p.startswith(WHITEOUT_PREFIX * 2) for p in parent) or (
                base.startswith(WHITEOUT_PREFIX * 2) and base != OPAQUE_MARKER):
            return Action(Do.SKIP, path)  # aufs bookkeeping (.wh..wh.plnk and the like)
        self._check_parents(member, path)
        if base == OPAQUE_MARKER:
            return Action(Do.OPAQUE, parent, Kind.DIR)
        if base.startswith(WHITEOUT_PREFIX):
            hidden = base[len(WHITEOUT_PREFIX):]
            if hidden in ("", ".", ".."):
                raise self._refuse(member, "is a whiteout of nothing")
            target = (*parent, hidden)
            self._record(member, target, Kind.CHAR)
            return Action(Do.WHITEOUT, target, Kind.CHAR)
        if member.kind in (Kind.CHAR, Kind.BLOCK, Kind.OTHER):
            raise self._refuse(member, "is not allowed: a layer may hold no device files "
                               "other than whiteouts")
        if member.kind == Kind.HARDLINK:
            try:
                link = split_path(member.linkname, "hard link target")
            except LayerRefused as exc:
                raise self._refuse(member, str(exc)) from None
            if self._kinds.get(link) != Kind.FILE:
                raise self._refuse(member, f"links to {member.linkname!r}, which is not a "
                                   "regular file earlier in this layer")
            self._record(member, path, Kind.FILE)
            return Action(Do.WRITE, path, Kind.HARDLINK, link)
        if member.kind == Kind.SYMLINK and ("\0" in member.linkname or not member.linkname):
            raise self._refuse(member, "has an empty or NUL-holding target")
        self._record(member, path, member.kind)
        return Action(Do.WRITE, path, member.kind)
