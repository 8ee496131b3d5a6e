"""The ImageCache controller's I/O shell: informers feed a work queue of cache names; each
reconcile reads the informers' stores, asks the pure planner
(webhook.controller.core.reconcile_cache) what to do, and does it. Pod Events and
lastMatchedTime come from a watch of labelled pods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from webhook.controller.core import manifests_snapshot as ms
from webhook.controller.core import reconcile_cache as planner
from webhook.controller.core import reconcile_failures as rf
from webhook.controller.core import reconcile_model as m
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core import reconcile_pods as rp
from webhook.controller.core import reconcile_status as rs
from webhook.controller.core.manifests_build import DOCKERCONFIG_KEY, secret_key
from webhook.controller.core.pod_record import slim_pod
from webhook.controller.metrics import Metrics
from webhook.controller.workqueue import WorkQueue
from webhook.core import names
from webhook.core.caches import parse_time
from webhook.kube import client as k
from webhook.kube.client import ApiError, Kube, Obj
from webhook.kube.informer import Informer

log = logging.getLogger(__name__)
EVENT_NAMESPACE = "default"  # Events of cluster-scoped objects live there (as client-go does)
EVENT_MESSAGE_MAX = 1024
POD_EVENT_WORKERS = 8


class ControllerError(RuntimeError):
    """The controller cannot run; the message says what to fix."""


def _cache_of(obj: Obj) -> str | None:
    meta = obj.get("metadata") or {}
    name = (meta.get("annotations") or {}).get(rn.CACHE_ANNOTATION)
    return str(name) if name else None


def _pod_cache(obj: Obj) -> str | None:
    meta = obj.get("metadata") or {}
    name = (meta.get("annotations") or {}).get(names.CACHE) or (meta.get("labels") or {}).get(
        names.CACHE
    )
    return str(name) if name else None


def _claim_cache(obj: Obj) -> str | None:
    name = ((obj.get("metadata") or {}).get("labels") or {}).get(names.CACHE)
    return str(name) if name else None


def _decided(obj: Obj) -> bool:
    meta = obj.get("metadata") or {}
    return names.DECISION in (meta.get("annotations") or {}) or names.CACHE in (
        meta.get("labels") or {}
    )


def _copy_namespace(obj: Obj) -> str | None:
    """The namespace a copy (its VolumeSnapshot or its content) is for; None if no copy."""
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(rn.COMPONENT_LABEL) != rn.COPY:
        return None
    ref = (obj.get("spec") or {}).get("volumeSnapshotRef") or {}
    return str(meta.get("namespace") or ref.get("namespace") or "") or None


def _copy_problem(obj: Obj, exc: ApiError) -> str:
    meta = obj.get("metadata") or {}
    namespace = _copy_namespace(obj)
    if exc.status == 404:
        return f"namespace {namespace} does not exist: create it, or drop it from spec.namespaces"
    if exc.status == 403:
        return (
            f"{obj.get('kind')} {meta.get('name')} could not be created ({exc.message}): a "
            f"terminating namespace, or the controller's RBAC lacks create on "
            f"{obj.get('kind')} in {namespace}"
        )
    return f"{obj.get('kind')} {meta.get('name')} was refused: {exc.message}"


def now_utc() -> datetime:
    return datetime.now(UTC)


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: m.Settings,
        metrics: Metrics | None = None,
        *,
        workers: int = 4,
        watch_timeout: int = 300,
        status_batch_seconds: float = 10.0,
        pod_event_max_age: float = 3600.0,
        clock: Callable[[], datetime] = now_utc,
        cache_selector: str | None = None,
        pod_selector: str | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.workers = workers
        self.status_batch_seconds = status_batch_seconds
        self.pod_event_max_age = pod_event_max_age
        self.clock = clock
        self.queue = WorkQueue()
        kube.observer = lambda verb: self.metrics.api_requests.labels(verb=verb).inc()
        ns = settings.namespace
        managed = f"{rn.MANAGED_BY}={rn.MANAGER}"

        def informer(res: k.Resource, **kw: Any) -> Informer:
            kw.setdefault("index", _cache_of)
            kw.setdefault("handler", self._on_owned)
            return Informer(kube, res, watch_timeout=watch_timeout, **kw)

        self.caches = informer(
            k.IMAGECACHE, handler=self._on_cache, index=None, label_selector=cache_selector
        )
        self.jobs = informer(k.JOB, namespace=ns, label_selector=managed)
        self.builder_pods = informer(
            k.POD, namespace=ns, label_selector=f"{managed},{rn.BUILD_OF_LABEL}", name="builds"
        )
        self.pvcs = informer(k.PVC, namespace=ns, label_selector=managed)
        self.secrets = informer(k.SECRET, namespace=ns, label_selector=managed)
        self.snapshots = informer(k.SNAPSHOT, label_selector=managed)
        self.contents = informer(k.CONTENT, label_selector=managed)
        self.classes = informer(k.SNAPSHOT_CLASS, handler=self._on_class, index=None)
        # Pods' cache disks being cloned (the webhook labels the claim template): a snapshot
        # one of them still clones from is in use. Build disks are ours, not pods'.
        self.claims = informer(
            k.PVC,
            label_selector=f"{names.CACHE},{rn.MANAGED_BY}!={rn.MANAGER}",
            index=_claim_cache,
            handler=self._on_claim,
            name="claims",
        )
        # Namespaces that opt in get copies before their first pod asks.
        self.namespaces = informer(
            k.NAMESPACE,
            label_selector=names.NAMESPACE_AUTO_LABEL,
            handler=self._on_namespace,
            index=None,
        )
        # Pods the webhook decided on: a hit carries the cache label, but a miss only an
        # annotation, which no selector can pick; so all pods are watched and only decided
        # ones kept (--pod-selector narrows the watch, e.g. to imagecache.dev/cache).
        self.user_pods = informer(
            k.POD,
            label_selector=pod_selector,
            handler=self._on_user_pod,
            index=_pod_cache,
            keep=_decided,
            transform=slim_pod,  # only what is read of a pod is kept (issue 10.8)
            name="pods",
        )
        self.informers = [
            self.caches,
            self.jobs,
            self.builder_pods,
            self.pvcs,
            self.secrets,
            self.snapshots,
            self.contents,
            self.classes,
            self.user_pods,
            self.claims,
            self.namespaces,
        ]
        self._by_kind = {
            "Job": self.jobs,
            "PersistentVolumeClaim": self.pvcs,
            "Secret": self.secrets,
            "VolumeSnapshot": self.snapshots,
            "VolumeSnapshotContent": self.contents,
        }
        self._reported: set[str] = set()  # pod uids whose Event was written (or exists)
        self._pod_events: asyncio.Queue[m.UserPod] = asyncio.Queue()
        self._matched: dict[str, datetime] = {}  # cache -> newest matched pod, not yet written
        self._primary_contents: dict[str, m.ContentState] = {}
        self._copy_problems: dict[str, dict[str, str]] = {}  # cache -> namespace -> why
        self.reconcile_count = 0
        self.started = False

    # --- event handlers: map a change to the cache(s) to reconcile ------------------------

    def _on_cache(self, kind: str, obj: Obj) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if name:
            self.queue.add(str(name))

    def _on_owned(self, kind: str, obj: Obj) -> None:
        cache = _cache_of(obj)
        if cache:
            self.queue.add(cache)

    def _on_class(self, kind: str, obj: Obj) -> None:
        for cache in self.caches:
            phase = (cache.get("status") or {}).get("phase")
            if phase != rs.READY:
                self._on_cache(kind, cache)

    def _on_claim(self, kind: str, obj: Obj) -> None:
        cache = _claim_cache(obj)
        if cache:
            self.queue.add(cache)

    def _on_namespace(self, kind: str, obj: Obj) -> None:
        for cache in self.caches:
            if (cache.get("status") or {}).get("phase") == rs.READY:
                self._on_cache(kind, cache)

    def _on_user_pod(self, kind: str, obj: Obj) -> None:
        pod = m.user_pod_state(obj)
        cache = _pod_cache(obj)
        age = (self.clock() - pod.created).total_seconds() if pod.created else 0.0
        recent = age < self.settings.in_use_grace_seconds
        if cache and (kind == "ADDED" or recent):
            # ADDED: a copy may be needed in its namespace; a recent pod that starts or goes
            # may end the in-use protection a deletion or replacement waits for.
            self.queue.add(cache)
        if kind == "DELETED":
            self._reported.discard(pod.uid)
            return
        if pod.uid in self._reported:
            return
        if age > self.pod_event_max_age:
            return
        if rp.pod_event(pod.annotations) is None:
            return
        self._reported.add(pod.uid)
        self._pod_events.put_nowait(pod)
        matched = rp.latest_matches([pod])
        for name, created in matched.items():
            if name not in self._matched or created > self._matched[name]:
                self._matched[name] = created

    # --- observing -----------------------------------------------------------------------

    async def observe(self, obj: Obj) -> m.Observed:
        cache = m.cache_state(obj)
        name = cache.name
        snapshots = tuple(m.snapshot_state(s) for s in self.snapshots.indexed(name))
        contents = [m.content_state(c) for c in self.contents.indexed(name)]
        served_name = cache.status.get("snapshotName")
        for snap in snapshots:
            # A primary's content is made by the snapshot controller, without our labels:
            # read it by name once, when its handle is needed to go Ready.
            if (
                snap.component == rn.PRIMARY
                and snap.ready
                and snap.bound_content
                and snap.name != served_name
            ):
                content = await self._primary_content(snap.bound_content)
                if content is not None:
                    contents.append(content)
        classes_known = self.classes.synced.is_set() and self.classes.failed is None
        return m.Observed(
            cache=cache,
            jobs=tuple(m.job_state(j) for j in self.jobs.indexed(name)),
            builder_pods=tuple(m.builder_pod_state(p) for p in self.builder_pods.indexed(name)),
            owned=(
                *(m.owned_state(o, "PersistentVolumeClaim") for o in self.pvcs.indexed(name)),
                *(m.owned_state(o, "Secret") for o in self.secrets.indexed(name)),
            ),
            snapshots=snapshots,
            contents=tuple(contents),
            pods=tuple(m.user_pod_state(p) for p in self.user_pods.indexed(name)),
            snapshot_classes=tuple(m.snapshot_class_state(c) for c in self.classes),
            classes_known=classes_known,
            claims=tuple(m.claim_state(c) for c in self.claims.indexed(name)),
            labelled_namespaces=tuple(
                str((n.get("metadata") or {}).get("name"))
                for n in self.namespaces
                if not (n.get("metadata") or {}).get("deletionTimestamp")
            ),
            copy_problems=dict(self._copy_problems.get(name, {})),
        )

    async def _primary_content(self, name: str) -> m.ContentState | None:
        known = self._primary_contents.get(name)
        if known is not None and known.handle:
            return known
        obj = await self.kube.find(k.CONTENT, None, name)
        if obj is None:
            return None
        state = m.content_state(obj)
        if state.handle:
            self._primary_contents[name] = state
        return state

    # --- reconciling ---------------------------------------------------------------------

    async def reconcile(self, name: str) -> float | None:
        obj = self.caches.get("", name)
        if obj is None:
            self._copy_problems.pop(name, None)
            return None
        observed = await self.observe(obj)
        plan = planner.plan(observed, self.settings, self.clock())
        log.debug(
            "%s: %s (requeue %s)",
            name,
            ", ".join(type(a).__name__ for a in plan.actions) or "nothing to do",
            plan.requeue_after,
        )
        await self.execute(plan, observed, obj)
        return plan.requeue_after

    async def execute(self, plan: m.Plan, observed: m.Observed, obj: Obj) -> None:
        cache = observed.cache
        refused: set[str] = set()  # namespaces a copy could not be made in, this pass
        for action in plan.actions:
            event = m.event_of(action)
            if event is not None and m.event_first(action):
                await self.emit(obj, event)
                event = None
            done = True  # whether the action's own Event is to be written
            if isinstance(action, m.Create):
                namespace = _copy_namespace(action.obj)
                if namespace in refused:
                    continue  # never a snapshot bound to a content not ours
                done = await self._create(action.obj, cache.name)
                if namespace and namespace in self._copy_problems.get(cache.name, {}):
                    refused.add(namespace)
            elif isinstance(action, m.Delete):
                await self._delete(action)
            elif isinstance(action, m.CopyPullSecrets):
                problem = await self._copy_pull_secrets(action)
                if problem is not None:
                    failure = planner.pull_secret_failure(
                        observed, self.settings, problem, self.clock()
                    )
                    await self.execute(failure, observed, obj)
                    return
            elif isinstance(action, m.PatchStatus):
                await self._patch_status(cache, action.status, observed)
            elif isinstance(action, m.AddFinalizer | m.RemoveFinalizer):
                await self._finalizer(obj, add=isinstance(action, m.AddFinalizer))
            elif isinstance(action, m.DeleteCache):
                try:
                    await self.kube.delete(k.IMAGECACHE, None, cache.name, uid=cache.uid)
                except ApiError as exc:
                    if exc.status not in (404, 409):
                        raise
            if done and event is not None:
                await self.emit(obj, event)

    async def _create(self, obj: Obj, cache: str) -> bool:
        """Create; False if it already existed (or, for a copy, could not be made: the
        copy's problem is kept for the cache's status, and the reconcile goes on)."""
        meta = obj.get("metadata") or {}
        copy = (meta.get("labels") or {}).get(rn.COMPONENT_LABEL) == rn.COPY
        try:
            created = await self.kube.create(obj)
        except ApiError as exc:
            if exc.status == 409:
                if copy:
                    await self._check_copy(obj, cache)
                return False
            if copy and exc.status in (403, 404, 422):
                self._copy_failed(cache, obj, _copy_problem(obj, exc))
                return False
            raise
        informer = self._by_kind.get(str(obj.get("kind")))
        if informer is not None:
            informer.remember(created)
        if copy:
            self._copy_failed(cache, obj, None)
        return True

    async def _check_copy(self, obj: Obj, cache: str) -> None:
        """A copy's name was taken: it must be this cache's copy, never assumed to be."""
        meta = obj.get("metadata") or {}
        res = k.resource(str(obj["apiVersion"]), str(obj["kind"]))
        try:
            existing = await self.kube.get(res, meta.get("namespace"), str(meta["name"]))
        except ApiError as exc:
            if exc.status == 404:  # gone meanwhile: the next pass makes it
                self.queue.add_after(cache, 1.0)
                return
            raise
        foreign = ms.foreign_copy(existing, obj)
        if foreign is None:
            informer = self._by_kind.get(str(obj.get("kind")))
            if informer is not None:
                informer.remember(existing)
            self._copy_failed(cache, obj, None)
            return
        self._copy_failed(cache, obj, f"{foreign}: delete or rename it to let the copy be made")

    def _copy_failed(self, cache: str, obj: Obj, problem: str | None) -> None:
        """Keep (or clear) why a copy into a namespace failed; a change is logged and the
        cache reconciled again soon, so its status and Events say it."""
        namespace = _copy_namespace(obj) or ""
        problems = self._copy_problems.setdefault(cache, {})
        if problems.get(namespace) == problem or (problem is None and namespace not in problems):
            return
        if problem is None:
            del problems[namespace]
            return
        problems[namespace] = problem
        log.warning("%s: copy into namespace %s: %s", cache, namespace, problem)
        self.queue.add_after(cache, 0.5)

    async def _delete(self, action: m.Delete) -> None:
        res = k.resource(action.api_version, action.kind)
        propagation = "Background" if action.kind == "Job" else None
        try:
            await self.kube.delete(res, action.namespace, action.name, propagation=propagation)
        except ApiError as exc:
            if exc.status != 404:
                raise
        informer = self._by_kind.get(action.kind)
        if informer is not None:
            informer.forget(action.namespace or "", action.name)
        elif action.kind == "Pod":
            self.builder_pods.forget(action.namespace or "", action.name)

    async def _copy_pull_secrets(self, action: m.CopyPullSecrets) -> str | None:
        data: dict[str, str] = {}
        for index, source in enumerate(action.sources):
            namespace, _, name = source.partition("/")
            try:
                secret = await self.kube.get(k.SECRET, namespace, name)
            except ApiError as exc:
                if exc.status == 404:
                    return rf.pull_secret_missing(source, "no such Secret")
                if exc.status == 403:
                    return rf.pull_secret_missing(
                        source, "the controller may not read it (RBAC: allow get on this Secret)"
                    )
                raise
            value = (secret.get("data") or {}).get(DOCKERCONFIG_KEY)
            if not value:
                return rf.pull_secret_missing(
                    source,
                    f"it has no {DOCKERCONFIG_KEY} key (type {secret.get('type', 'unset')}); "
                    "it must be of type kubernetes.io/dockerconfigjson",
                )
            data[secret_key(index)] = value
        await self._create({**action.secret, "data": data}, "")
        return None

    async def _patch_status(self, cache: m.Cache, patch: Obj, observed: m.Observed) -> None:
        try:
            updated = await self.kube.patch(
                k.IMAGECACHE, None, cache.name, {"status": patch}, subresource="status"
            )
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        self.caches.remember(updated)
        if patch.get("phase") == rs.READY and "readyTime" in patch:
            bid = patch.get("buildId") or cache.status.get("buildId")
            for job in observed.jobs:
                if job.bid == bid and job.component == rn.BUILDER and job.start:
                    seconds = (self.clock() - job.start).total_seconds()
                    self.metrics.build_seconds.observe(max(0.0, seconds))

    async def _finalizer(self, obj: Obj, add: bool) -> None:
        meta = obj.get("metadata") or {}
        current = self.caches.get("", str(meta.get("name"))) or obj
        current_meta = current.get("metadata") or {}
        finalizers = list(current_meta.get("finalizers") or [])
        if add and rn.FINALIZER not in finalizers:
            finalizers.append(rn.FINALIZER)
        elif not add and rn.FINALIZER in finalizers:
            finalizers.remove(rn.FINALIZER)
        else:
            return
        patch = {
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": current_meta.get("resourceVersion"),
            }
        }
        try:
            updated = await self.kube.patch(k.IMAGECACHE, None, str(meta.get("name")), patch)
        except ApiError as exc:
            if exc.status == 404 and not add:
                return
            raise
        self.caches.remember(updated)

    async def emit(self, obj: Obj, action: m.Emit) -> None:
        meta = obj.get("metadata") or {}
        stamp = rs.rfc3339(self.clock())
        name = str(meta.get("name", ""))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{rn.bounded(name, 200)}.{time.time_ns():x}",
                "namespace": EVENT_NAMESPACE,
            },
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": name,
                "uid": meta.get("uid", ""),
            },
            "type": action.type,
            "reason": action.reason,
            "message": action.message[:EVENT_MESSAGE_MAX],
            "source": {"component": rn.EVENT_SOURCE},
            "reportingComponent": rn.EVENT_SOURCE,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.kube.create(event)
        except (ApiError, OSError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("event %s on %s not written: %s", action.reason, name, exc)
        log.info("%s %s: %s", name, action.reason, action.message)

    # --- pods ----------------------------------------------------------------------------

    async def _pod_event_worker(self) -> None:
        while True:
            pod = await self._pod_events.get()
            event = rp.pod_event(pod.annotations)
            if event is None:
                continue
            manifest = rp.event_manifest(pod, event, rs.rfc3339(self.clock()))
            try:
                await self.kube.create(manifest)
                self.metrics.pod_events.labels(reason=event.reason).inc()
            except ApiError as exc:
                if exc.status != 409:  # 409: written before (a restart): once per pod
                    log.warning("event on pod %s/%s: %s", pod.namespace, pod.name, exc)
                    self._reported.discard(pod.uid)
            except (OSError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("event on pod %s/%s: %s", pod.namespace, pod.name, exc)
                self._reported.discard(pod.uid)

    async def flush_matched(self) -> int:
        """Write lastMatchedTime for the caches pods matched since the last flush: one status
        write per cache, however many pods. Returns the number of writes."""
        pending, self._matched = self._matched, {}
        current: dict[str, datetime | None] = {}
        for name in pending:
            obj = self.caches.get("", name)
            if obj is not None:
                current[name] = parse_time((obj.get("status") or {}).get("lastMatchedTime"))
        writes = 0
        for name, seen in rp.last_matched_updates(pending, current).items():
            patch = {"status": {"lastMatchedTime": rs.rfc3339(seen)}}
            try:
                updated = await self.kube.patch(
                    k.IMAGECACHE, None, name, patch, subresource="status"
                )
                self.caches.remember(updated)
                writes += 1
            except (ApiError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("lastMatchedTime of %s: %s", name, exc)
                if name not in self._matched or seen > self._matched[name]:
                    self._matched[name] = seen
        return writes

    def update_gauges(self) -> None:
        counts: dict[str, int] = {}
        for obj in self.caches:
            phase = str((obj.get("status") or {}).get("phase") or "Pending")
            counts[phase] = counts.get(phase, 0) + 1
        self.metrics.set_phases(counts)
        self.metrics.queue_depth.set(len(self.queue))

    # --- running -------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            name = await self.queue.get()
            try:
                self.reconcile_count += 1
                self.metrics.reconciles.inc()
                requeue = await self.reconcile(name)
                self.queue.forget(name)
                if requeue is not None:
                    self.queue.add_after(name, requeue)
            except ApiError as exc:
                reason = "Conflict" if exc.status == 409 else exc.reason
                self.metrics.reconcile_errors.labels(reason=reason).inc()
                delay = self.queue.retry(name)
                log.warning("reconcile %s: %s (retry in %.1fs)", name, exc, delay)
            except (OSError, aiohttp.ClientError, TimeoutError) as exc:
                self.metrics.reconcile_errors.labels(reason="Connection").inc()
                delay = self.queue.retry(name)
                log.warning("reconcile %s: %s (retry in %.1fs)", name, exc, delay)
            except Exception:
                self.metrics.reconcile_errors.labels(reason="Internal").inc()
                delay = self.queue.retry(name)
                log.exception("reconcile %s failed (retry in %.1fs)", name, delay)
            finally:
                self.queue.done(name)

    async def _periodic(self, stop: asyncio.Event) -> None:
        last_resync = time.monotonic()
        while not await k.sleep_or_stop(stop, self.status_batch_seconds):
            await self.flush_matched()
            self.update_gauges()
            if time.monotonic() - last_resync >= self.settings.resync_seconds:
                last_resync = time.monotonic()
                for obj in self.caches:
                    self._on_cache("RESYNC", obj)

    def health(self) -> str | None:
        for informer in self.informers:
            if informer is self.classes:
                continue  # without snapshot CRDs the controller still reports why
            if informer.failed and not informer.synced.is_set():
                return f"{informer.name}: {informer.failed}"
        return None

    async def run(self, stop: asyncio.Event, sync_timeout: float = 60.0) -> None:
        tasks = [
            asyncio.create_task(i.run(stop), name=f"informer-{i.name}") for i in self.informers
        ]
        tasks.append(asyncio.create_task(self.queue.run_timers(stop)))
        try:
            waits = [i.synced.wait() for i in self.informers if i is not self.classes]
            try:
                await asyncio.wait_for(asyncio.gather(*waits), sync_timeout)
            except TimeoutError:
                missing = [
                    f"{i.name} ({i.failed or 'no answer'})"
                    for i in self.informers
                    if i is not self.classes and not i.synced.is_set()
                ]
                raise ControllerError(
                    f"could not list {', '.join(missing)} within {sync_timeout:.0f}s: are the "
                    "ImageCache and VolumeSnapshot CRDs installed and the controller's RBAC "
                    "rules applied?"
                ) from None
            try:  # the classes are optional (no snapshot CRDs: caches say so when built)
                await asyncio.wait_for(self.classes.synced.wait(), 5)
            except TimeoutError:
                log.warning("VolumeSnapshotClasses not listed: %s", self.classes.failed)
            self.started = True
            self.update_gauges()
            log.info("informers synced: %d caches", len(self.caches))
            tasks += [asyncio.create_task(self._worker()) for _ in range(self.workers)]
            tasks += [
                asyncio.create_task(self._pod_event_worker()) for _ in range(POD_EVENT_WORKERS)
            ]
            tasks.append(asyncio.create_task(self._periodic(stop)))
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
