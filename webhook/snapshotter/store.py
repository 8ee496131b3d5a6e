"""The snapshotter's metadata: one sqlite database in its root (WAL, one transaction per
call), so a snapshotter killed at any point restarts with every snapshot containerd was told
about, and none it was not.

Durability against power loss: a transaction is fsync'd at commit (synchronous=FULL), except
the record of a layer taken from a cache disk (`durable=False`): its commit reaches the OS at
once (a process crash keeps it) and the disk a moment later, when a background thread fsyncs
the WAL once for all the layers of a pull. Losing such a record to a power cut in that moment
loses no data (the content is on the read-only cache disk); containerd then finds the layer
missing and prepares it again, which takes it from the disk again.

Each snapshot has an id; an ordinary one owns `snapshots/<id>/fs` (and `work`) in the root,
a disk-backed one (`source` = chain ID hex) owns no directory: its content is the layer
directory on a cache disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from webhook.snapshotter.core.snapshots import (
    AlreadyExists,
    FailedPrecondition,
    Info,
    Kind,
    NotFound,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL DEFAULT '',
    kind INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""
_COLUMNS = "id, name, parent, kind, created, updated, labels, size, inodes, source"


def _info(row: tuple[object, ...]) -> Info:
    id_, name, parent, kind, created, updated, labels, size, inodes, source = row
    return Info(int(id_), str(name), str(parent), Kind(int(kind)),  # type: ignore[call-overload]
                float(created), float(updated), json.loads(str(labels)),  # type: ignore[arg-type]
                int(size), int(inodes), str(source))  # type: ignore[call-overload]


class Store:
    def __init__(self, path: Path, sync_delay: float = 0.2) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._lock = threading.RLock()
        self._wal = f"{path}-wal"
        self._sync_delay = sync_delay
        self._unsynced = threading.Event()
        self._closed = False
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        self._syncer = threading.Thread(target=self._sync_loop, name="store-sync", daemon=True)
        self._syncer.start()

    def close(self) -> None:
        self._closed = True
        self._syncer.join(30)
        with self._lock:
            self.sync()
            self._db.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One call's changes, all or nothing; fsync'd at commit unless not `durable` (then
        by the background sync, `sync_delay` seconds later)."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")
                    self._unsynced.set()

    def sync(self) -> None:
        """fsync the WAL: every commit so far survives a power cut."""
        self._unsynced.clear()
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed and removed: the database file was synced
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_loop(self) -> None:
        """Group commit: one fsync for the records a pull writes one after the other."""
        while not self._closed:
            if self._unsynced.wait(0.5):  # bounded: close() must never wait on a cleared event
                time.sleep(self._sync_delay)
                self.sync()

    def get(self, name: str) -> Info:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE name = ?",
                                   (name,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {name!r} does not exist")
        return _info(row)

    def find(self, name: str) -> Info | None:
        try:
            return self.get(name)
        except NotFound:
            return None

    def all(self) -> list[Info]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY id").fetchall()
        return [_info(r) for r in rows]

    def create(self, db: sqlite3.Connection, name: str, parent: str, kind: Kind,
               labels: Mapping[str, str], source: str = "", size: int = 0) -> Info:
        if db.execute("SELECT 1 FROM snapshots WHERE name = ?", (name,)).fetchone():
            raise AlreadyExists(f"snapshot {name!r} already exists")
        if parent:
            row = db.execute("SELECT kind FROM snapshots WHERE name = ?", (parent,)).fetchone()
            if row is None:
                raise NotFound(f"parent snapshot {parent!r} does not exist")
            if Kind(row[0]) != Kind.COMMITTED:
                raise FailedPrecondition(f"parent {parent!r} is not a committed snapshot")
        now = time.time()
        cursor = db.execute(
            "INSERT INTO snapshots (name, parent, kind, created, updated, labels, source, size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, parent, int(kind), now, now, json.dumps(dict(labels)), source, size))
        return Info(int(cursor.lastrowid or 0), name, parent, kind, now, now, dict(labels),
                    size, 0, source)

    def commit(self, db: sqlite3.Connection, key: str, name: str,
               labels: Mapping[str, str], size: int, inodes: int) -> Info:
        row = db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE name = ?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        active = _info(row)
        if active.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active (it is "
                                     f"{active.kind.name.lower()}); only active snapshots "
                                     "can be committed")
        if db.execute("SELECT 1 FROM snapshots WHERE name = ?", (name,)).fetchone():
            raise AlreadyExists(f"snapshot {name!r} already exists")
        now = time.time()
        db.execute("UPDATE snapshots SET name = ?, kind = ?, updated = ?, labels = ?, size = ?,"
                   " inodes = ? WHERE id = ?",
                   (name, int(Kind.COMMITTED), now, json.dumps(dict(labels)), size, inodes,
                    active.id))
        return Info(active.id, name, active.parent, Kind.COMMITTED, active.created, now,
                    dict(labels), size, inodes, active.source)

    def remove(self, db: sqlite3.Connection, key: str) -> Info:
        row = db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE name = ?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        if db.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (key,)).fetchone():
            raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has children")
        db.execute("DELETE FROM snapshots WHERE name = ?", (key,))
        return _info(row)

    def set_labels(self, db: sqlite3.Connection, name: str, labels: Mapping[str, str]) -> Info:
        row = db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {name!r} does not exist")
        now = time.time()
        db.execute("UPDATE snapshots SET labels = ?, updated = ? WHERE name = ?",
                   (json.dumps(dict(labels)), now, name))
        info = _info(row)
        return Info(info.id, info.name, info.parent, info.kind, info.created, now,
                    dict(labels), info.size, info.inodes, info.source)

    def set_usage(self, db: sqlite3.Connection, name: str, size: int, inodes: int) -> None:
        db.execute("UPDATE snapshots SET size = ?, inodes = ? WHERE name = ?",
                   (size, inodes, name))

    def ids(self) -> set[int]:
        with self._lock:
            return {int(r[0]) for r in self._db.execute("SELECT id FROM snapshots")}
