"""The reconcile plan for one ImageCache: observed state + settings + now -> actions + status.

The plan is derived from what exists, never from memory of earlier passes: every object a
build makes has the build id in its name and labels, so a controller that was killed at any
point and started again computes the same next step. The concerns each have their planner:
reconcile_build (sizing, builder Job, snapshot), reconcile_expiry (Ready, retention),
reconcile_cleanup (stale builds, superseded snapshots, deletion), reconcile_copies (copies in
the namespaces that use the cache); reconcile_status says it in status and Events.
"""

from __future__ import annotations

from datetime import datetime

from webhook.controller.core import reconcile_failures as rf
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core.reconcile_build import plan_build
from webhook.controller.core.reconcile_cleanup import clean_stale, plan_deletion
from webhook.controller.core.reconcile_copies import publish_copies
from webhook.controller.core.reconcile_expiry import plan_ready
from webhook.controller.core.reconcile_model import (
    AddFinalizer,
    DeleteCache,
    Observed,
    Plan,
    Settings,
)
from webhook.controller.core.reconcile_pass import Pass
from webhook.controller.core.reconcile_spec import build_inputs, spec_problem
from webhook.controller.core.reconcile_status import Problem


def plan(obs: Observed, settings: Settings, now: datetime) -> Plan:
    """The next actions for `obs.cache`."""
    step = Pass(obs, settings, now)
    if obs.cache.deleting:
        return plan_deletion(step)
    if rn.FINALIZER not in obs.cache.finalizers:
        step.actions.append(AddFinalizer())
    inputs = build_inputs(obs, settings)
    served = step.served()
    problem = spec_problem(obs.cache.spec, settings)
    if problem is not None:
        step.fail(served, problem, inputs.bid)
        clean_stale(step, served, keep=None)
    elif served is not None and served.bid == inputs.bid:
        plan_ready(step, served, inputs)
    else:
        plan_build(step, served, inputs)
    if not any(isinstance(a, DeleteCache) for a in step.actions):
        publish_copies(step)
    return step.finish()


def pull_secret_failure(obs: Observed, settings: Settings, message: str, now: datetime) -> Plan:
    """The status to write when a pull secret named by the spec cannot be copied."""
    step = Pass(obs, settings, now)
    inputs = build_inputs(obs, settings)
    step.fail(step.served(), Problem(rf.PULL_SECRET_MISSING, message), inputs.bid)
    return step.finish()
