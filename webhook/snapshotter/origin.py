"""Whether a cache disk's layers may be used: the API reads behind
webhook.snapshotter.core.disk_origin.judge, and its answers kept per volume.

A verdict (trusted or refused) is kept for as long as the disk stays mounted: a PV's claim,
its source snapshot and its pod do not change what they were cloned from. No answer (API
down, RBAC missing, timeout) is not a verdict: the disk is not used (its layers are pulled
as usual: fail safe, never blocking a pull for longer than the reads' deadline) and it is
asked again after `retry` seconds. Every check is logged with its reason and counted in
`imagecache_snapshotter_disk_origin{result}`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from webhook.snapshotter.core.disk_origin import Read, Verdict, Volume, judge, shared_refusal
from webhook.snapshotter.kubeapi import KubeReader, KubeReadError
from webhook.snapshotter.metrics import SnapshotterMetrics

log = logging.getLogger("imagecache.snapshotter")

TRUSTED, REFUSED, UNKNOWN = "trusted", "refused", "unknown"
MAX_READS = 8  # judge needs at most 5


class DiskOrigin:
    def __init__(self, reader: KubeReader | None, controller_namespace: str,
                 metrics: SnapshotterMetrics, retry: float = 10.0,
                 no_reader_reason: str = "") -> None:
        self.reader = reader
        self.controller_namespace = controller_namespace
        self.metrics = metrics
        self.retry = retry
        self.no_reader_reason = no_reader_reason
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        self._unknown: dict[tuple[str, str], float] = {}  # key -> when to ask again
        self._said: dict[str, tuple[bool, str]] = {}  # disk -> the verdict last logged
        self._lock = threading.Lock()

    def trusted(self, disk: str, volume: Volume | None, shared: bool) -> bool:
        if volume is None:
            return self._note(disk, None, Verdict(False, "not the kubelet's mount of a "
                                                  "PersistentVolume (an emptyDir, hostPath or "
                                                  "inline volume, or outside the kubelet's "
                                                  "layout)"))
        key = (volume.pod_uid, volume.pv)
        with self._lock:  # one check per volume at a time; the others wait for its answer
            if shared:  # checked each time: a second pod may mount the PV later
                return self._note(disk, key, shared_refusal(volume))
            known = self._verdicts.get(key)
            if known is not None:
                return known.trusted
            if time.monotonic() < self._unknown.get(key, 0.0):
                return False
            return self._check(disk, volume, key)

    def refused(self, volume: Volume | None, shared: bool) -> bool:
        """Refused for good (no API call): outside the kubelet's PV layout, shared, or a
        verdict against it. A disk not checked yet, or whose check got no answer, is not."""
        if volume is None or shared:
            return True
        with self._lock:
            known = self._verdicts.get((volume.pod_uid, volume.pv))
        return known is not None and not known.trusted

    def _check(self, disk: str, volume: Volume, key: tuple[str, str]) -> bool:
        if self.reader is None:
            return self._unanswered(disk, key, self.no_reader_reason or "no API access")
        facts: dict[str, dict[str, object] | None] = {}
        started = time.monotonic()
        step = judge(volume, facts, self.controller_namespace)
        for _ in range(MAX_READS):
            if not isinstance(step, Read):
                break
            try:
                facts[step.kind] = self.reader.get(step.kind, step.namespace, step.name)
            except KubeReadError as exc:
                return self._unanswered(disk, key, str(exc))
            step = judge(volume, facts, self.controller_namespace)
        if isinstance(step, Read):
            return self._unanswered(disk, key, f"more than {MAX_READS} reads")
        self._verdicts[key] = step
        self._unknown.pop(key, None)
        return self._note(disk, key, step, {"reads": len(facts),
                                            "ms": round((time.monotonic() - started) * 1000, 1)})

    def _note(self, disk: str, key: tuple[str, str] | None, verdict: Verdict,
              extra: dict[str, object] | None = None) -> bool:
        """Log and count a verdict once per disk (again only if it changes)."""
        if self._said.get(disk) == (verdict.trusted, verdict.reason):
            return verdict.trusted
        self._said[disk] = (verdict.trusted, verdict.reason)
        result = TRUSTED if verdict.trusted else REFUSED
        self.metrics.disk_origin.labels(result).inc()
        fields = {"disk": disk, "origin": result, "reason": verdict.reason,
                  "pod": key[0] if key else "", "pv": key[1] if key else "", **(extra or {})}
        if verdict.trusted:
            log.info("cache disk %s: origin checked: %s", disk, verdict.reason,
                     extra={"fields": fields})
        else:
            log.warning("cache disk %s is not used (its layers are pulled as usual): %s",
                        disk, verdict.reason, extra={"fields": fields})
        return verdict.trusted

    def _unanswered(self, disk: str, key: tuple[str, str], why: str) -> bool:
        self._unknown[key] = time.monotonic() + self.retry
        self.metrics.disk_origin.labels(UNKNOWN).inc()
        log.warning("cache disk %s is not used for now (its layers are pulled as usual): its "
                    "origin cannot be checked through the API: %s; asking again in %.0fs",
                    disk, why, self.retry,
                    extra={"fields": {"disk": disk, "origin": UNKNOWN, "reason": why,
                                      "pod": key[0], "pv": key[1]}})
        return False

    def forget(self, present: Iterable[tuple[str, Volume | None]]) -> None:
        """Drop the answers for disks (path, volume) no longer mounted."""
        present = list(present)
        keep = {(v.pod_uid, v.pv) for _, v in present if v is not None}
        paths = {disk for disk, _ in present}
        with self._lock:
            for table in (self._verdicts, self._unknown):
                for key in [k for k in table if k not in keep]:
                    del table[key]
            for disk in [d for d in self._said if d not in paths]:
                del self._said[disk]
