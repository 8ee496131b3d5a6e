"""The reconcile planner, table-driven: observed state + now -> actions and status."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from webhook.controller.core import reconcile_cache as rc
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core.reconcile_jobs import auto_size_gib
from webhook.controller.core.reconcile_model import (
    AddFinalizer,
    BuilderPod,
    Cache,
    ClaimState,
    ContentState,
    CopyPullSecrets,
    Create,
    Delete,
    DeleteCache,
    Emit,
    JobState,
    Observed,
    OwnedObject,
    PatchStatus,
    Plan,
    RemoveFinalizer,
    Settings,
    SnapshotClass,
    SnapshotState,
    UserPod,
    builder_pod_state,
    event_first,
    event_of,
)
from webhook.controller.core.reconcile_spec import build_inputs
from webhook.core.build_result import encode_build_error, encode_build_result

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = Settings(namespace="imc", builder_image="img", snapshot_class="snap")
CLASSES = (SnapshotClass("snap", "csi.example", False),)
D1 = "sha256:" + "1" * 64
GIB = 1024**3
NAME = "web"


def cache(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, **kw: Any
) -> Cache:
    base = Cache(
        name=NAME,
        uid="uid-1",
        generation=1,
        deleting=False,
        finalizers=(rn.FINALIZER,),
        annotations={},
        spec=spec if spec is not None else {"images": ["nginx"], "imageCacheSize": 5},
        status=status or {},
    )
    return replace(base, **kw)


def bid_of(c: Cache) -> str:
    return build_inputs(Observed(cache=c), SETTINGS).bid


def observed(c: Cache, **kw: Any) -> Observed:
    kw.setdefault("snapshot_classes", CLASSES)
    return Observed(cache=c, **kw)


def job(c: Cache, component: str = rn.BUILDER, **kw: Any) -> JobState:
    base = JobState(name=f"job-{component}", bid=bid_of(c), component=component, succeeded=False,
                    failed=False, start=NOW - timedelta(minutes=3))  # fmt: skip
    return replace(base, **kw)


def pod(c: Cache, message: str | None, component: str = rn.BUILDER, reason: str = "") -> BuilderPod:
    return BuilderPod(name=f"pod-{component}", bid=bid_of(c), component=component,
                      phase="Succeeded", termination_message=message, exit_code=0,
                      reason=reason, created=NOW)  # fmt: skip


def primary(
    bid: str, ready: bool = False, error: str | None = None, result: str = ""
) -> SnapshotState:
    return SnapshotState(name=rn.primary_name(NAME, bid), namespace="imc", bid=bid,
                         component=rn.PRIMARY, ready=ready, error=error,
                         bound_content="content-1" if ready else None, restore_size="5Gi",
                         result=result or None)  # fmt: skip


def kinds(plan: Plan) -> list[str]:
    """The actions in the order the shell writes them; an Event an action carries is
    "Emit <reason>" after it (before it for the actions the cache may not outlive)."""
    out = []
    for action in plan.actions:
        event = event_of(action)
        written = [f"Emit {event.reason}"] if event is not None else []
        if isinstance(action, Create):
            done = [f"Create {action.obj['kind']}"]
        elif isinstance(action, Delete):
            done = [f"Delete {action.kind}"]
        elif isinstance(action, Emit):
            done = []
        else:
            done = [type(action).__name__]
        out += written + done if event_first(action) else done + written
    return out


def events(plan: Plan) -> list[Emit]:
    return [e for e in map(event_of, plan.actions) if e is not None]


def status_of(plan: Plan) -> dict[str, Any]:
    patches = [a.status for a in plan.actions if isinstance(a, PatchStatus)]
    return patches[-1] if patches else {}


RESULT = encode_build_result([("docker.io/library/nginx:latest", D1, 3 * GIB)], 3 * GIB)
C = cache()
B = bid_of(C)
READY_STATUS = {
    "phase": "Ready", "snapshotName": rn.primary_name(NAME, B), "buildId": B,
    "snapshotHandle": "h1", "snapshotDriver": "csi.example", "readyTime": "2024-04-30T12:00:00Z",
    "images": [{"image": "docker.io/library/nginx:latest", "digest": D1, "size": 3}],
}  # fmt: skip
SERVED = primary(B, ready=True)


@pytest.mark.parametrize(
    ("obs", "expected_kinds", "expected_status"),
    [
        pytest.param(
            observed(cache(finalizers=())),
            ["AddFinalizer", "Create PersistentVolumeClaim", "Create Job", "Emit BuildStarted",
             "PatchStatus"],
            {"phase": "Creating"},
            id="new-cache-builds",
        ),
        pytest.param(
            observed(cache({"images": ["nginx"], "imagePullSecrets": ["imc/regcred"]})),
            ["CopyPullSecrets", "Create PersistentVolumeClaim", "Create Job", "Emit BuildStarted",
             "PatchStatus"],
            {"phase": "Creating"},
            id="pull-secrets-copied-first",
        ),
        pytest.param(
            observed(cache({"images": ["nginx"], "imageCacheSize": 0})),
            ["Create Job", "Emit SizingStarted", "PatchStatus"],
            {"phase": "Creating"},
            id="auto-size-measures-first",
        ),
        pytest.param(
            observed(C, jobs=(job(C),)),
            ["PatchStatus"],
            {"phase": "Creating", "message": "builder Job job-builder is pulling the images"},
            id="job-running",
        ),
        pytest.param(
            observed(C, jobs=(job(C, succeeded=True),), builder_pods=(pod(C, RESULT),)),
            ["Create VolumeSnapshot", "Emit Built", "PatchStatus"],
            {"phase": "Creating"},
            id="built-takes-snapshot",
        ),
        pytest.param(
            observed(C, jobs=(job(C, succeeded=True),), builder_pods=(pod(C, None),)),
            ["Emit BuildResultUnreadable", "PatchStatus"],
            {"phase": "Failed"},
            id="no-result",
        ),
        pytest.param(
            observed(C, jobs=(job(C, failed=True),),
                     builder_pods=(pod(C, encode_build_error("Unauthorized", "401 from reg")),)),
            ["Emit Unauthorized", "PatchStatus"],
            {"phase": "Failed", "message": "401 from reg. Put a kubernetes.io/dockerconfigjson "
             "Secret that can pull it in spec.imagePullSecrets as namespace/name (now: none)"},
            id="unauthorized",
        ),
        pytest.param(
            observed(C, jobs=(job(C, failed=True),),
                     builder_pods=(pod(C, encode_build_error("DiskFull", "needs 9 GiB")),)),
            ["Emit DiskFull", "PatchStatus"],
            {"phase": "Failed", "message": "needs 9 GiB. the 5Gi cache disk is too small: set "
             "spec.imageCacheSize larger, or to 0 to size it from the images"},
            id="disk-full",
        ),
        pytest.param(
            observed(C, jobs=(job(C, failed=True, reason="DeadlineExceeded"),)),
            ["Emit DeadlineExceeded", "PatchStatus"],
            {"phase": "Failed"},
            id="deadline",
        ),
        pytest.param(
            observed(C, jobs=(job(C, failed=True),),
                     builder_pods=(pod(C, None, reason="OOMKilled"),)),
            ["Emit OutOfMemory", "PatchStatus"],
            {"phase": "Failed", "message": "the builder ran out of memory (4Gi): raise the "
             "controller's --builder-memory"},
            id="oom",
        ),
        pytest.param(
            observed(C, snapshots=(primary(B, error="quota exceeded"),)),
            ["Emit SnapshotFailed", "PatchStatus"],
            {"phase": "Failed"},
            id="snapshot-error",
        ),
        pytest.param(
            observed(C, snapshots=(primary(B),)),
            ["PatchStatus"],
            {"phase": "Creating"},
            id="snapshot-not-ready",
        ),
        pytest.param(
            observed(C, snapshot_classes=()),
            ["Emit SnapshotClassMissing", "PatchStatus"],
            {"phase": "Failed", "message": "VolumeSnapshotClass 'snap' does not exist: create it "
             "or set spec.volumeSnapshotClassName to one that does (classes: none)"},
            id="snapshot-class-missing",
        ),
        pytest.param(
            observed(cache({"images": ["Nginx:1"]})),
            ["Emit InvalidSpec", "PatchStatus"],
            {"phase": "Failed"},
            id="invalid-reference",
        ),
        pytest.param(
            observed(cache(status=READY_STATUS), snapshots=(SERVED,),
                     jobs=(job(C, succeeded=True),), builder_pods=(pod(C, RESULT),),
                     owned=(OwnedObject("PersistentVolumeClaim", "pvc", B, "5Gi"),)),
            ["Delete Job", "Delete Pod", "Delete PersistentVolumeClaim", "Emit BuildCleanedUp",
             "PatchStatus"],
            {"message": f"1 image cached in snapshot {SERVED.name}"},  # phase: still Ready
            id="ready-cleans-the-build",
        ),
    ],
)  # fmt: skip
def test_plan(obs: Observed, expected_kinds: list[str], expected_status: dict[str, Any]) -> None:
    plan = rc.plan(obs, SETTINGS, NOW)
    assert kinds(plan) == expected_kinds
    status = status_of(plan)
    for key, value in expected_status.items():
        assert status.get(key) == value, (key, status)


def test_build_job_and_disk_follow_the_spec() -> None:
    c = cache({"images": ["nginx", "ghcr.io/o/a:1"], "imageCacheSize": 12,
               "storageClassName": "fast", "platforms": ["linux/arm64"]})  # fmt: skip
    plan = rc.plan(observed(c), SETTINGS, NOW)
    created = {a.obj["kind"]: a.obj for a in plan.actions if isinstance(a, Create)}
    pvc = created["PersistentVolumeClaim"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "12Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    args = created["Job"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["build", "--name", NAME, "--image", "nginx", "--image", "ghcr.io/o/a:1",
                    "--output", "/cache", "--platform", "linux/arm64",
                    "--termination-log", "/dev/termination-log",
                    "--log-level", "info", "--log-format", "json"]  # fmt: skip


def test_sized_build_uses_the_measured_size() -> None:
    c = cache({"images": ["nginx"], "imageCacheSize": 0})
    total = 5 * GIB
    result = encode_build_result([("docker.io/library/nginx:latest", D1, total)], total)
    obs = observed(c, jobs=(job(c, rn.SIZER, succeeded=True),),
                   builder_pods=(pod(c, result, rn.SIZER),))  # fmt: skip
    plan = rc.plan(obs, SETTINGS, NOW)
    pvc = next(a.obj for a in plan.actions if isinstance(a, Create) and a.obj["kind"] != "Job")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "8Gi"  # 5 x 1.3 + 1 = 7.5
    assert "Emit Sized" in kinds(plan)


@pytest.mark.parametrize(
    ("total", "gib"), [(0, 1), (1, 2), (GIB, 3), (10 * GIB, 14), (10**16, 10000)]
)
def test_auto_size(total: int, gib: int) -> None:
    assert auto_size_gib(total) == gib


@pytest.mark.parametrize(
    ("retention", "expected"),
    [(None, None), (0, None), (3, "2024-05-04T12:00:00Z")],
)
def test_ready_sets_expiry_from_retention(retention: int | None, expected: str | None) -> None:
    spec: dict[str, Any] = {"images": ["nginx"], "imageCacheSize": 5}
    if retention is not None:
        spec["retentionDays"] = retention
    c = cache(spec)
    snap = primary(bid_of(c), ready=True, result=RESULT)
    content = ContentState("content-1", "", "h9", "csi.example", "imc")
    plan = rc.plan(observed(c, snapshots=(snap,), contents=(content,)), SETTINGS, NOW)
    status = status_of(plan)
    assert status["phase"] == "Ready" and status["readyTime"] == "2024-05-01T12:00:00Z"
    assert status.get("expireTime") == expected
    assert status["images"] == [{"image": "docker.io/library/nginx:latest", "digest": D1,
                                 "size": 3 * GIB}]  # fmt: skip
    assert (status["snapshotHandle"], status["restoreSize"], status["imageCount"]) == (
        "h9",
        "5Gi",
        1,
    )
    assert "Emit Ready" in kinds(plan)


def _expired(pods: tuple[UserPod, ...]) -> Plan:
    c = cache({"images": ["nginx"], "imageCacheSize": 5, "retentionDays": 1}, READY_STATUS)
    return rc.plan(observed(c, snapshots=(SERVED,), pods=pods), SETTINGS, NOW)


def test_expired_cache_is_deleted() -> None:
    plan = _expired(())
    assert kinds(plan)[-3:] == ["Emit Expired", "DeleteCache", "PatchStatus"]
    assert status_of(plan)["phase"] == "Expired"


COPY_B = SnapshotState(rn.copy_name(NAME, B), "app", B, rn.COPY, True, None, None, None, None)


def claim(snapshot: str, bound: bool = False, name: str = "p-imagecache") -> ClaimState:
    return ClaimState("app", name, snapshot, bound)


def clone_pod(age: float, phase: str = "Pending", snapshot: str = COPY_B.name) -> UserPod:
    return UserPod("app", "p", "u", NOW - timedelta(seconds=age), phase, clones=snapshot)


@pytest.mark.parametrize(
    ("claims", "pods", "protected"),
    [
        pytest.param((claim(COPY_B.name),), (), True, id="claim-cloning"),
        pytest.param((claim(COPY_B.name),), (clone_pod(86400),), True, id="old-pod-claim-pending"),
        pytest.param((claim(COPY_B.name, bound=True),), (clone_pod(5),), False, id="claim-bound"),
        pytest.param((claim("other"),), (), False, id="claim-of-another-snapshot"),
        pytest.param((), (clone_pod(30),), True, id="new-pod-claim-not-made-yet"),
        pytest.param((), (clone_pod(600),), False, id="pod-without-claim-for-long"),
        pytest.param((), (clone_pod(30, "Running"),), False, id="pod-running"),
        pytest.param((), (clone_pod(30, snapshot="x"),), False, id="pod-cloning-another"),
    ],
)
def test_expiry_waits_while_a_claim_clones(
    claims: tuple[ClaimState, ...], pods: tuple[UserPod, ...], protected: bool
) -> None:
    """Issue 10.2: in use = a claim naming the copy and not Bound yet, however old its pod."""
    c = cache({"images": ["nginx"], "imageCacheSize": 5, "retentionDays": 1}, READY_STATUS)
    obs = observed(c, snapshots=(SERVED, COPY_B), claims=claims, pods=pods)
    plan = rc.plan(obs, SETTINGS, NOW)
    assert any(isinstance(a, DeleteCache) for a in plan.actions) is not protected
    if protected:
        assert "deleting once no claim clones it" in status_of(plan)["message"]
        assert "Emit ExpiryDeferred" in kinds(plan)
        assert plan.requeue_after is not None


def test_spec_change_rebuilds_beside_the_served_snapshot() -> None:
    changed = cache({"images": ["nginx", "redis"], "imageCacheSize": 5}, READY_STATUS)
    plan = rc.plan(observed(changed, snapshots=(SERVED,)), SETTINGS, NOW)
    assert kinds(plan) == ["Create PersistentVolumeClaim", "Create Job", "Emit BuildStarted",
                           "PatchStatus"]  # fmt: skip
    status = status_of(plan)
    assert status.get("phase", "Ready") == "Ready"  # unchanged: still serving
    assert status["message"].startswith("rebuilding for the changed spec")
    assert status["buildId"] != B


def test_rebuild_switches_copies_when_ready_and_keeps_the_old_while_cloned() -> None:
    """Issue 10.1: the new copy is made beside the old one; status.namespaces switches only
    when it is ready; the old copy goes once no claim clones it, then the old primary."""
    new = cache({"images": ["nginx", "redis"], "imageCacheSize": 5})
    nb = bid_of(new)
    status = {**READY_STATUS, "snapshotName": rn.primary_name(NAME, nb), "buildId": nb,
              "snapshotHandle": "h2",
              "namespaces": [{"namespace": "app", "snapshotName": COPY_B.name,
                              "readyToUse": True}]}  # fmt: skip
    new = replace(new, status=status)
    fresh = rn.copy_name(NAME, nb)
    snaps = (SERVED, primary(nb, ready=True), COPY_B)
    plan = rc.plan(observed(new, snapshots=snaps), SETTINGS, NOW)
    assert kinds(plan) == ["Create VolumeSnapshotContent", "Create VolumeSnapshot",
                           "Emit SnapshotCopied", "PatchStatus"]  # fmt: skip
    assert "namespaces" not in status_of(plan)  # pods keep getting the old copy
    status = {**status, **{k: v for k, v in status_of(plan).items() if v is not None}}
    new = replace(new, status=status)
    content = next(a.obj for a in plan.actions if isinstance(a, Create))
    assert content["spec"]["source"] == {"snapshotHandle": "h2"}
    assert content["spec"]["deletionPolicy"] == "Retain"
    assert content["spec"]["sourceVolumeMode"] == "Filesystem"
    # The new copy exists, not ready: pods keep getting the old one.
    pending = SnapshotState(fresh, "app", nb, rn.COPY, False, None, None, None, None)
    plan = rc.plan(observed(new, snapshots=(*snaps, pending)), SETTINGS, NOW)
    assert kinds(plan) == []
    # Ready, but a claim still clones the old copy: switched, the old copy kept, and said.
    ready = replace(pending, ready=True)
    obs = observed(new, snapshots=(*snaps, ready), claims=(claim(COPY_B.name),))
    plan = rc.plan(obs, SETTINGS, NOW)
    entry = status_of(plan)["namespaces"][0]
    assert entry["snapshotName"] == fresh and entry["readyToUse"] is True
    assert "previous copy" in entry["message"] and "claim app/p-imagecache" in entry["message"]
    assert kinds(plan) == ["Emit SnapshotCopyReady", "Emit SnapshotInUse", "PatchStatus"]
    # The claim is Bound: the old copy goes; the old primary waits for it.
    switched = replace(new, status={**status, "namespaces": [entry]})
    obs = observed(switched, snapshots=(*snaps, ready), claims=(claim(COPY_B.name, True),))
    plan = rc.plan(obs, SETTINGS, NOW)
    deletes = [(a.kind, a.namespace, a.name) for a in plan.actions if isinstance(a, Delete)]
    assert deletes == [("VolumeSnapshot", "app", COPY_B.name)]
    # Next pass, the old copy is gone: the old primary goes.
    plan = rc.plan(observed(switched, snapshots=(*snaps[:2], ready)), SETTINGS, NOW)
    assert kinds(plan)[:2] == ["Delete VolumeSnapshot", "Emit SnapshotDeleted"]


@pytest.mark.parametrize(
    ("spec_extra", "pod_namespaces", "labelled", "copies"),
    [
        ({}, ["a", "b"], [], ["a", "b"]),
        ({"namespaces": ["c"]}, [], [], ["c"]),
        ({"namespaces": ["c"]}, ["a"], ["l"], ["c"]),  # a and l may not use it
        ({}, [], ["l", "imc"], ["l"]),  # labelled; never the controller's own namespace
        ({"imagePullSecrets": ["team/cred"]}, ["team", "other"], [], ["team"]),
        # spec.namespaces narrows the secrets' namespaces, never widens them (issue 10.4)
        ({"imagePullSecrets": ["team/cred"], "namespaces": ["team", "x"]}, ["x"], ["x"], ["team"]),
    ],
)
def test_copies_go_where_the_cache_is_used_and_usable(
    spec_extra: dict[str, Any], pod_namespaces: list[str], labelled: list[str], copies: list[str]
) -> None:
    c = cache({"images": ["nginx"], "imageCacheSize": 5, **spec_extra})
    c = replace(c, status={**READY_STATUS, "snapshotName": rn.primary_name(NAME, bid_of(c)),
                           "buildId": bid_of(c)})  # fmt: skip
    pods = tuple(UserPod(ns, "p", ns, NOW, "Running") for ns in pod_namespaces)
    obs = observed(c, snapshots=(primary(bid_of(c), ready=True),), pods=pods,
                   labelled_namespaces=tuple(labelled))  # fmt: skip
    plan = rc.plan(obs, replace(SETTINGS, pull_secret_namespaces=("*",)), NOW)
    made = [a.obj["metadata"]["namespace"] for a in plan.actions
            if isinstance(a, Create) and a.obj["kind"] == "VolumeSnapshot"]  # fmt: skip
    assert made == copies
    entries = status_of(plan)["namespaces"]
    assert [(e["namespace"], e["readyToUse"]) for e in entries] == [(n, False) for n in copies]


def test_copy_names_never_collide() -> None:
    """Issue 10.3: cache web in prod-x and cache web-prod in x got the same content name."""
    one = rn.copy_content_name("uid-1", "web", "prod-x", "b1")
    two = rn.copy_content_name("uid-2", "web-prod", "x", "b1")
    assert one != two
    assert rn.copy_content_name("uid-1", "web", "x", "b1") != rn.copy_content_name(
        "uid-1", "web", "x", "b2"
    )


def test_a_copy_that_cannot_be_made_is_said_and_retried() -> None:
    c = cache({"images": ["nginx"], "imageCacheSize": 5, "namespaces": ["gone"]}, READY_STATUS)
    problem = "namespace gone does not exist: create it, or drop it from spec.namespaces"
    obs = observed(c, snapshots=(SERVED,), copy_problems={"gone": problem})
    plan = rc.plan(obs, SETTINGS, NOW)
    entry = status_of(plan)["namespaces"][0]
    assert entry == {"namespace": "gone", "snapshotName": rn.copy_name(NAME, B),
                     "readyToUse": False, "message": problem}  # fmt: skip
    warning = [e for e in events(plan) if e.type == "Warning"]
    assert [w.reason for w in warning] == ["SnapshotCopyFailed"]
    assert plan.requeue_after is not None


def test_failed_build_is_not_retried_and_is_cleaned_up() -> None:
    failed = rc.plan(
        observed(C, jobs=(job(C, failed=True, reason="DeadlineExceeded"),)), SETTINGS, NOW
    )
    status = status_of(failed)
    after = cache(status=status)
    plan = rc.plan(observed(after, jobs=(job(C, failed=True),)), SETTINGS, NOW)
    assert kinds(plan) == ["Delete Job", "Emit BuildCleanedUp"]
    assert rc.plan(observed(after), SETTINGS, NOW).actions == ()
    # A new value of the rebuild annotation is a new build.
    retry = replace(after, annotations={rn.REBUILD_ANNOTATION: "1"})
    assert "Create Job" in kinds(rc.plan(observed(retry), SETTINGS, NOW))


def test_deletion_cleans_up_then_releases_the_finalizer() -> None:
    doomed = cache(status=READY_STATUS, deleting=True)
    content = ContentState("copy-content", B, "h1", "csi.example", "app", rn.COPY)
    plan = rc.plan(observed(doomed, snapshots=(SERVED, COPY_B), contents=(content,)), SETTINGS, NOW)
    assert kinds(plan) == ["Delete VolumeSnapshot", "Delete VolumeSnapshot",
                           "Delete VolumeSnapshotContent"]  # fmt: skip
    assert plan.requeue_after is not None
    plan = rc.plan(observed(doomed), SETTINGS, NOW)
    assert kinds(plan) == ["Emit CleanedUp", "RemoveFinalizer"]
    cloning = observed(doomed, snapshots=(COPY_B,), claims=(claim(COPY_B.name),))
    deferred = rc.plan(cloning, SETTINGS, NOW)
    assert kinds(deferred) == ["Emit DeletionDeferred", "PatchStatus"]
    assert not any(isinstance(a, RemoveFinalizer) for a in deferred.actions)


def test_without_the_finalizer_nothing_is_done_for_a_deleting_cache() -> None:
    assert rc.plan(observed(cache(deleting=True, finalizers=())), SETTINGS, NOW).actions == ()


def test_default_snapshot_class_is_used_when_none_is_named() -> None:
    settings = replace(SETTINGS, snapshot_class=None)
    classes = (SnapshotClass("a", "d", False), SnapshotClass("dflt", "d", True))
    obs = observed(C, jobs=(job(C, succeeded=True),), builder_pods=(pod(C, RESULT),),
                   snapshot_classes=classes)  # fmt: skip
    plan = rc.plan(obs, settings, NOW)
    snap = next(a.obj for a in plan.actions if isinstance(a, Create))
    assert snap["spec"]["volumeSnapshotClassName"] == "dflt"
    assert snap["metadata"]["annotations"][rn.RESULT_ANNOTATION] == RESULT
    no_default = rc.plan(observed(C, snapshot_classes=classes[:1]), settings, NOW)
    assert "none is marked default" in status_of(no_default)["message"]


def test_planning_twice_changes_nothing_the_second_time() -> None:
    """Idempotence: once the status is written, the same observation plans no writes."""
    obs = observed(C, jobs=(job(C),))
    first = rc.plan(obs, SETTINGS, NOW)
    status = {k: v for k, v in status_of(first).items() if v is not None}
    second = rc.plan(observed(cache(status=status), jobs=(job(C),)), SETTINGS, NOW + timedelta(1))
    assert second.actions == ()


def test_pull_secret_failure_status() -> None:
    plan = rc.pull_secret_failure(observed(C), SETTINGS, "pull secret a/b: gone", NOW)
    assert status_of(plan)["phase"] == "Failed"
    assert kinds(plan) == ["Emit PullSecretMissing", "PatchStatus"]


def test_copy_pull_secrets_names_every_source() -> None:
    c = cache({"images": ["nginx"], "imagePullSecrets": ["a/x", "b/y"]})
    settings = replace(SETTINGS, pull_secret_namespaces=("a", "b"))
    action = next(a for a in rc.plan(observed(c), settings, NOW).actions
                  if isinstance(a, CopyPullSecrets))  # fmt: skip
    assert action.sources == ("a/x", "b/y")
    assert action.secret["metadata"]["namespace"] == "imc"
    assert AddFinalizer not in {type(a) for a in rc.plan(observed(c), settings, NOW).actions}


@pytest.mark.parametrize(
    ("allowed", "refused"),
    [((), "a/x"), (("a",), "b/y"), (("a", "b"), None), (("*",), None)],
)
def test_pull_secrets_outside_the_allowed_namespaces_are_refused(
    allowed: tuple[str, ...], refused: str | None
) -> None:
    """Issue 10.4: a cache may not borrow a Secret the controller is not allowed to read."""
    c = cache({"images": ["nginx"], "imagePullSecrets": ["imc/own", "a/x", "b/y"]})
    plan = rc.plan(observed(c), replace(SETTINGS, pull_secret_namespaces=allowed), NOW)
    copies = [a for a in plan.actions if isinstance(a, CopyPullSecrets)]
    if refused is None:
        assert copies
        return
    assert not copies and "Create Job" not in kinds(plan)
    status = status_of(plan)
    assert status["phase"] == "Failed"
    index = ["imc/own", "a/x", "b/y"].index(refused)
    assert status["message"].startswith(
        f"spec.imagePullSecrets[{index}] {refused}: the controller may not read Secrets in "
        f"namespace {refused[0]}"
    )
    assert "controller.pullSecretNamespaces" in status["message"]
    assert "Emit PullSecretNotAllowed" in kinds(plan)


@pytest.mark.parametrize(
    ("pod_status", "reason", "says"),
    [
        ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": "0/1 nodes are available: 1 Insufficient cpu."}]},
         "BuilderUnschedulable", "lower the chart values builder.cpu"),
        ({"containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull",
                                                        "message": "not found"}}}]},
         "BuilderImagePullFailed", "cannot pull its image img (ErrImagePull: not found)"),
        ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulerError"}]},
         None, "is pulling the images"),
        # Seen on the real node: the Job's pod is scheduled before its disk's claim exists.
        # That passes by itself; it is not the CPU request (issue 12).
        ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": '0/1 nodes are available: 1 persistentvolumeclaim '
                                     '"imagecache-build-c-1" not found.'}]},
         None, "is pulling the images"),
        ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": "0/1 nodes are available: 1 pod has unbound immediate "
                                     "PersistentVolumeClaims."}]},
         "BuilderUnschedulable", "Its disk's claim is not bound: check the StorageClass"),
    ],
)  # fmt: skip
def test_a_builder_pod_that_cannot_run_is_reported(
    pod_status: dict[str, Any], reason: str | None, says: str
) -> None:
    """Issue 12: not "is pulling the images" while no node fits the builder."""
    labels = {rn.BUILD_LABEL: B, rn.COMPONENT_LABEL: rn.BUILDER}
    state = builder_pod_state({"metadata": {"name": "b-1", "labels": labels},
                               "status": {"phase": "Pending", **pod_status}})  # fmt: skip
    plan = rc.plan(observed(C, jobs=(job(C),), builder_pods=(state,)), SETTINGS, NOW)
    status = status_of(plan)
    assert says in status["message"], status["message"]
    built = next(c for c in status["conditions"] if c["type"] == "Built")
    assert built["reason"] == (reason or "Building")
    warnings = [e.reason for e in events(plan) if e.type == "Warning"]
    assert warnings == ([reason] if reason else [])
    # The same state again: no second Event.
    again = rc.plan(observed(cache(status=status), jobs=(job(C),), builder_pods=(state,)),
                    SETTINGS, NOW)  # fmt: skip
    assert not events(again)


def test_events_ride_on_the_action_they_tell() -> None:
    """Issue 13.11: an Event that tells what an action did is carried by it (the shell writes
    it only if the action made its object), not placed after it in the plan."""
    plan = rc.plan(observed(C), SETTINGS, NOW)
    job_create = next(a for a in plan.actions if isinstance(a, Create) and a.obj["kind"] == "Job")
    assert job_create.event is not None and job_create.event.reason == "BuildStarted"
    assert not [a for a in plan.actions if isinstance(a, Emit)]  # no free-standing Event


def test_the_snapshot_carries_the_result_that_was_read() -> None:
    """Issue 13.11 (found while splitting): the newest pod's message unreadable, an older
    one's readable: the snapshot must carry the readable one, whose images status shows."""
    older = replace(pod(C, RESULT), name="pod-old", created=NOW - timedelta(minutes=2))
    newer = replace(pod(C, "garbage"), name="pod-new")
    obs = observed(C, jobs=(job(C, succeeded=True),), builder_pods=(older, newer))
    plan = rc.plan(obs, SETTINGS, NOW)
    snapshot = next(a for a in plan.actions if isinstance(a, Create))
    assert snapshot.obj["metadata"]["annotations"][rn.RESULT_ANNOTATION] == RESULT
