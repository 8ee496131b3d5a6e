"""Unpack one layer blob into `/layers/<chainID hex>/`, ready to be an overlayfs lower dir.

The tar is read as a stream (gzip or plain), hashed as it is read, and checked member by
member by webhook.builder.core.layer_tar before anything is written. Every path is created through
directory file descriptors opened with O_NOFOLLOW, so even a member the rules missed cannot
make the builder write through a symlink. The layer is written into `layers/.partial/<hex>`
and renamed into place only when the uncompressed tar's sha256 equals the config's diff ID
and the data is on disk: a directory named by a chain ID is always whole, and a run killed
half-way leaves only `.partial/`, which the next run clears.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from webhook.builder.core.layer_tar import Action, Do, Kind, LayerCheck, LayerRefused, Member
from webhook.core.layer_chain import is_compressed, layer_dir_name

log = logging.getLogger("imagecache.builder")

PARTIAL_DIR = ".partial"
OPAQUE_XATTR = "trusted.overlay.opaque"
# Extended attributes carried over from a layer's PAX headers. trusted.* is never written
# from a tar: trusted.overlay.* in a layer would steer the overlay mount (redirects,
# metacopy) and only the builder decides what is opaque.
XATTR_PREFIXES = ("user.", "security.capability")
CHUNK = 1 << 20


class LayerMismatch(ValueError):
    """The uncompressed layer is not what the image config's diff ID says."""


@dataclass(frozen=True, slots=True)
class Unpacked:
    chain_id: str
    members: int
    bytes: int  # file content written
    seconds: float
    reused: bool = False


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _kind(info: tarfile.TarInfo) -> Kind:
    if info.isreg():
        return Kind.FILE
    for test, kind in ((info.isdir, Kind.DIR), (info.issym, Kind.SYMLINK),
                       (info.islnk, Kind.HARDLINK), (info.isfifo, Kind.FIFO),
                       (info.ischr, Kind.CHAR), (info.isblk, Kind.BLOCK)):
        if test():
            return kind
    return Kind.OTHER


def _syncfs(fd: int) -> None:
    """Flush the layer's filesystem once (cheaper than an fsync per file)."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
    if libc is None or libc.syncfs(fd) != 0:
        os.sync()


class _Writer:
    """Creates members under one root directory, never following a symlink."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._last: tuple[tuple[str, ...], int] | None = None
        self.dirs: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []

    def close(self) -> None:
        self._forget()
        os.close(self.root_fd)

    def _forget(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def dir_fd(self, parts: tuple[str, ...], create: bool = True) -> int:
        """An fd of the directory `parts` (made 0755 as needed); owned by the writer."""
        if not parts:
            return self.root_fd
        if self._last is not None and self._last[0] == parts:
            return self._last[1]
        self._forget()
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._last = (parts, fd)
        return fd

    def write(self, action: Action, info: tarfile.TarInfo, data: IO[bytes] | None) -> int:
        if action.do == Do.OPAQUE:
            os.setxattr(self.dir_fd(action.path), OPAQUE_XATTR, b"y")
            return 0
        parent = self.dir_fd(action.path[:-1])
        name = action.path[-1]
        if action.do == Do.WHITEOUT:
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
            os.chown(name, info.uid, info.gid, dir_fd=parent, follow_symlinks=False)
            return 0
        if action.kind == Kind.DIR:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
            self.dirs.append((action.path, info))
            return 0
        if action.kind == Kind.FILE:
            return self._file(parent, name, info, data)
        if action.kind == Kind.HARDLINK:
            source = self.dir_fd(action.link[:-1], create=False)
            source = os.dup(source)  # dir_fd() below may close the cached one
            try:
                os.link(action.link[-1], name, src_dir_fd=source,
                        dst_dir_fd=self.dir_fd(action.path[:-1]), follow_symlinks=False)
            finally:
                os.close(source)
            return 0
        if action.kind == Kind.SYMLINK:
            os.symlink(info.linkname, name, dir_fd=parent)
        elif action.kind == Kind.FIFO:
            os.mkfifo(name, info.mode & 0o7777, dir_fd=parent)
        os.chown(name, info.uid, info.gid, dir_fd=parent, follow_symlinks=False)
        mtime = int(info.mtime * 1e9)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
        return 0

    def _file(self, parent: int, name: str, info: tarfile.TarInfo, data: IO[bytes] | None) -> int:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        written = 0
        try:
            while data is not None and (chunk := data.read(CHUNK)):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                written += len(chunk)
            self._meta(fd, info)
        finally:
            os.close(fd)
        return written

    @staticmethod
    def _meta(fd: int, info: tarfile.TarInfo) -> None:
        os.fchown(fd, info.uid, info.gid)
        os.fchmod(fd, info.mode & 0o7777)  # after chown, which clears setuid bits
        for key, value in info.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                attr = key[len("SCHILY.xattr."):]
                if attr.startswith(XATTR_PREFIXES):
                    os.setxattr(fd, attr, value.encode("utf-8", "surrogateescape"))
        mtime = int(info.mtime * 1e9)
        os.utime(fd, ns=(mtime, mtime))

    def finish_dirs(self) -> None:
        """Directory modes, owners and times last: writing children changes mtimes."""
        self._forget()
        for parts, info in reversed(self.dirs):
            fd = os.open("/".join(parts), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                         dir_fd=self.root_fd) if parts else os.dup(self.root_fd)
            try:
                self._meta(fd, info)
            finally:
                os.close(fd)


def _open_stream(blob: Path, media_type: str) -> IO[bytes]:
    raw = open(blob, "rb")  # noqa: SIM115 - closed with the stream it feeds
    if media_type.endswith("zstd"):
        raw.close()
        raise LayerRefused(f"layer {blob.name}: zstd layers are not unpacked (no zstd "
                           "decoder); containerd pulls them as usual")
    if is_compressed(media_type):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    return raw


def _unpack_into(blob: Path, media_type: str, diff_id: str, layer: str,
                 target: Path) -> tuple[int, int]:
    check = LayerCheck(layer)
    stream = _open_stream(blob, media_type)
    hashing = _Hashing(stream)
    writer = _Writer(target)
    written = 0
    try:
        with tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
            for info in tar:
                action = check.admit(Member(info.name, _kind(info), info.size, info.linkname))
                if action.do == Do.SKIP:
                    continue
                data = tar.extractfile(info) if action.kind == Kind.FILE else None
                written += writer.write(action, info, data)
        hashing.drain()  # the end-of-archive blocks and padding count for the diff ID
        writer.finish_dirs()
        _syncfs(writer.root_fd)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
        raise LayerRefused(f"layer {layer}: not a readable tar: {exc}") from None
    finally:
        writer.close()
        stream.close()
    actual = "sha256:" + hashing.hash.hexdigest()
    if actual != diff_id:
        raise LayerMismatch(f"layer {layer}: uncompressed content is {actual}, but the image "
                            f"config's diff_ids say {diff_id}")
    return check.members, written


def unpack_layer(blob: Path, media_type: str, diff_id: str, chain_id: str,
                 layers_dir: Path) -> Unpacked:
    """Make `layers_dir/<chain hex>/` from `blob`, or find it made by an earlier run.
    Raises LayerRefused or LayerMismatch (nothing left behind), or OSError."""
    started = time.monotonic()
    name = layer_dir_name(chain_id)
    final = layers_dir / name
    if final.is_dir() and not final.is_symlink():
        return Unpacked(chain_id, 0, 0, 0.0, reused=True)
    partial = layers_dir / PARTIAL_DIR / name
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        members, written = _unpack_into(blob, media_type, diff_id, blob.name, partial)
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    fd = os.open(layers_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return Unpacked(chain_id, members, written, time.monotonic() - started)


def clear_partial(layers_dir: Path) -> int:
    """Drop what a killed run left half-written; returns how many layers that was."""
    partial = layers_dir / PARTIAL_DIR
    if not partial.is_dir():
        return 0
    count = sum(1 for _ in partial.iterdir())
    shutil.rmtree(partial)
    return count


def prune_layers(layers_dir: Path, keep: set[str]) -> int:
    """Remove layer directories no image of this build uses (left by an earlier build)."""
    removed = 0
    if not layers_dir.is_dir():
        return 0
    for entry in layers_dir.iterdir():
        if entry.name != PARTIAL_DIR and entry.name not in keep:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
    return removed


def is_permission_error(exc: OSError) -> bool:
    return exc.errno in (errno.EPERM, errno.EACCES)
