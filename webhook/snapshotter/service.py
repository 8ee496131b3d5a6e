"""containerd's Snapshots gRPC service over the Snapshotter: messages in and out, errors as
the gRPC codes containerd maps back to its errdefs (NotFound, AlreadyExists, ...). An
unexpected exception is logged and answered INTERNAL with its message, never a traceback."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from webhook.snapshotter.api import snapshots_pb2 as pb
from webhook.snapshotter.api import snapshots_pb2_grpc as pb_grpc
from webhook.snapshotter.core.snapshots import Info, Mount, SnapshotError
from webhook.snapshotter.snapshotter import Snapshotter

log = logging.getLogger("imagecache.snapshotter")
T = TypeVar("T")
LIST_BATCH = 100


def _timestamp(seconds: float) -> Any:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def info_message(info: Info) -> Any:
    return pb.Info(name=info.name, parent=info.parent, kind=info.kind.name,
                   created_at=_timestamp(info.created), updated_at=_timestamp(info.updated),
                   labels=dict(info.labels))


def mount_messages(mounts: list[Mount]) -> list[Any]:
    return [pb.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]


class SnapshotsService(pb_grpc.SnapshotsServicer):
    def __init__(self, snapshotter: Snapshotter) -> None:
        self.sn = snapshotter
        self.metrics = snapshotter.metrics

    def _call(self, method: str, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        code = "OK"
        try:
            return fn()
        except SnapshotError as exc:
            code = exc.code
            level = logging.INFO if code in ("ALREADY_EXISTS", "NOT_FOUND") else logging.WARNING
            log.log(level, "%s: %s", method, exc, extra={"fields": {"code": code}})
            context.abort(getattr(grpc.StatusCode, code), str(exc))
            raise  # abort raises; this is for the type checker
        except Exception as exc:
            code = "INTERNAL"
            log.error("%s failed: %s: %s", method, type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            context.abort(grpc.StatusCode.INTERNAL, f"{method}: {type(exc).__name__}: {exc}")
            raise
        finally:
            elapsed = time.monotonic() - started
            self.metrics.calls.labels(method, code).observe(elapsed)
            if log.isEnabledFor(logging.DEBUG):  # where a pull's time goes, call by call
                log.debug("%s %s %.2f ms", method, code, elapsed * 1000,
                          extra={"fields": {"method": method, "code": code,
                                            "ms": round(elapsed * 1000, 2)}})

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        mounts = self._call("Prepare", context, lambda: self.sn.prepare(
            request.key, request.parent, dict(request.labels)))
        return pb.PrepareSnapshotResponse(mounts=mount_messages(mounts))

    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        mounts = self._call("View", context, lambda: self.sn.view(
            request.key, request.parent, dict(request.labels)))
        return pb.ViewSnapshotResponse(mounts=mount_messages(mounts))

    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        mounts = self._call("Mounts", context, lambda: self.sn.mounts(request.key))
        return pb.MountsResponse(mounts=mount_messages(mounts))

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._call("Commit", context, lambda: self.sn.commit(
            request.name, request.key, dict(request.labels)))
        return empty_pb2.Empty()

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._call("Remove", context, lambda: self.sn.remove(request.key))
        return empty_pb2.Empty()

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        info = self._call("Stat", context, lambda: self.sn.stat(request.key))
        return pb.StatSnapshotResponse(info=info_message(info))

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        info = self._call("Update", context, lambda: self.sn.update(
            request.info.name, dict(request.info.labels), list(request.update_mask.paths)))
        return pb.UpdateSnapshotResponse(info=info_message(info))

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        infos = self._call("List", context, lambda: self.sn.list(list(request.filters)))
        for start in range(0, len(infos), LIST_BATCH):
            yield pb.ListSnapshotsResponse(
                info=[info_message(i) for i in infos[start:start + LIST_BATCH]])

    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        size, inodes = self._call("Usage", context, lambda: self.sn.usage(request.key))
        return pb.UsageResponse(size=size, inodes=inodes)

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        removed = self._call("Cleanup", context, self.sn.cleanup)
        if removed:
            log.info("cleanup removed %d orphaned directories", removed)
        return empty_pb2.Empty()
