"""What goes: builds other than the one wanted, primaries superseded by a newer one, and,
when the cache is deleted, everything it made. Never a snapshot a claim still clones."""

from __future__ import annotations

from webhook.controller.core import manifests_snapshot as ms
from webhook.controller.core import reconcile_in_use as ru
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core import reconcile_status as rs
from webhook.controller.core.reconcile_model import Emit, Plan, RemoveFinalizer, SnapshotState
from webhook.controller.core.reconcile_pass import Pass

WAIT_SECONDS = 10.0  # requeue while waiting on something no watch event announces


def clean_stale(step: Pass, served: SnapshotState | None, keep: str | None) -> None:
    """Delete builds other than `keep`, and primaries neither served nor being built, once
    no copy points at them and no claim still clones from them."""
    for bid in sorted(step.build_bids() - {keep}):
        step.delete_build(
            bid,
            Emit(
                rs.NORMAL,
                "BuildCleanedUp",
                f"deleted build {bid}: its Job, pods, PVC and pull Secret",
            ),
        )
    keep_snapshots = {keep, served.bid if served else None}
    copies = [s for s in step.obs.snapshots if s.component == rn.COPY]
    for snap in step.primaries():
        if snap.bid in keep_snapshots or snap.deleting:
            continue
        if snap.ready and (any(c.bid == snap.bid for c in copies) or step.in_use([snap])):
            continue  # its copies go first (see reconcile_copies)
        deleted = None
        if snap.ready:
            deleted = Emit(rs.NORMAL, "SnapshotDeleted", f"deleted superseded snapshot {snap.name}")
        step.delete(ms.SNAPSHOT_API, "VolumeSnapshot", snap.namespace, snap.name, deleted)


def plan_deletion(step: Pass) -> Plan:
    """The cache is being deleted: everything it made goes, then its finalizer."""
    obs = step.obs
    if rn.FINALIZER not in obs.cache.finalizers:
        return Plan(())
    busy = step.in_use(obs.snapshots)
    if busy:
        message = f"deleting once no claim clones its snapshots ({ru.few(busy)})"
        if step.status.get("message") != message:
            step.status["message"] = message
            step.emit(rs.NORMAL, "DeletionDeferred", message)
        return step.finish()
    for bid in sorted(step.build_bids()):
        step.delete_build(bid)
    remaining = len(obs.jobs) + len(obs.builder_pods) + len(obs.owned)
    for snap in obs.snapshots:
        remaining += 1
        if not snap.deleting:
            step.delete(ms.SNAPSHOT_API, "VolumeSnapshot", snap.namespace, snap.name)
    for content in obs.contents:
        if content.component != rn.COPY:
            continue  # a primary's content: the snapshot controller deletes it with its snapshot
        remaining += 1
        if not content.deleting:
            step.delete(ms.SNAPSHOT_API, "VolumeSnapshotContent", None, content.name)
    if remaining:
        step.wait(WAIT_SECONDS)
        return Plan(tuple(step.actions), step.requeue)
    done = Emit(rs.NORMAL, "CleanedUp", "deleted the snapshots, copies and build objects")
    step.actions.append(RemoveFinalizer(done))
    return Plan(tuple(step.actions), None)
