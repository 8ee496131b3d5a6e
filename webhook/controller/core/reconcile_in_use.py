"""What "in use" means (DESIGN.md, "Snapshot copies across namespaces"): a snapshot that a
claim still clones must not go, whether expiry, deletion or a rebuild wants it gone."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from webhook.controller.core.reconcile_model import Observed, SnapshotState, claim_name

POLL_SECONDS = 10.0  # a pod's claim not made yet: its creation is announced, its delay not


def cloning(obs: Observed, namespace: str, snapshot: str, now: datetime, grace: float) -> list[str]:
    """Who still clones `snapshot` in `namespace`: claims naming it as dataSource that are not
    Bound yet, and pods admitted with it whose claim is not made yet (for `grace` seconds
    after the pod's creation: the ephemeral volume controller makes it right away)."""
    users = [
        f"claim {c.namespace}/{c.name}"
        for c in obs.claims
        if c.namespace == namespace and c.snapshot == snapshot and not c.bound and not c.deleting
    ]
    made = {(c.namespace, c.name) for c in obs.claims}
    window = timedelta(seconds=grace)
    for pod in obs.pods:
        if (
            pod.namespace == namespace
            and pod.clones == snapshot
            and pod.phase in ("", "Pending")
            and (namespace, claim_name(pod.name)) not in made
            and pod.created is not None
            and now - pod.created < window
        ):
            users.append(f"pod {namespace}/{pod.name} (its claim is not made yet)")
    return users


def in_use(
    obs: Observed, snapshots: Iterable[SnapshotState], now: datetime, grace: float
) -> list[str]:
    """Everyone still cloning one of `snapshots`."""
    users: list[str] = []
    for snap in snapshots:
        users += cloning(obs, snap.namespace, snap.name, now, grace)
    return users


def few(users: list[str], shown: int = 3) -> str:
    more = len(users) - shown
    return ", ".join(users[:shown]) + (f" and {more} more" if more > 0 else "")
