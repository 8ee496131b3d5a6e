"""Rendering the Helm chart for tests: `helm template` / `helm lint` with values given as dicts,
and offline validation of the rendered objects against Kubernetes' schemas."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from envtest import ControlPlane

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "charts" / "imagecache"
# kubernetes-validate ships schemas from 1.28 on; 1.30 has policy/v1 and every kind we render.
VALIDATE_VERSION = "1.30.0"
HELM_MISSING = "helm is not installed: run hack/tools.sh (puts it into .tools/bin)"

Obj = dict[str, Any]


def helm_binary() -> str | None:
    local = REPO_ROOT / ".tools" / "bin" / "helm"
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


class HelmError(AssertionError):
    """helm exited non-zero; `stderr` holds its message."""

    def __init__(self, args: Sequence[str], stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed:\n{stderr}")
        self.stderr = stderr


def helm(*args: str, values: Obj | None = None, timeout: float = 60) -> str:
    """Run helm with `values` as a values file; returns stdout, raises HelmError."""
    binary = helm_binary()
    if binary is None:
        raise RuntimeError(HELM_MISSING)
    with tempfile.TemporaryDirectory(prefix="imagecache-helm-") as tmp:
        argv = [binary, *args]
        if values is not None:
            path = Path(tmp) / "values.yaml"
            path.write_text(json.dumps(values))  # JSON is YAML
            argv += ["--values", str(path)]
        env = {**os.environ, "HELM_CACHE_HOME": f"{tmp}/cache", "HELM_CONFIG_HOME": f"{tmp}/cfg"}
        env.setdefault("HELM_DATA_HOME", f"{tmp}/data")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise HelmError(args, result.stderr + result.stdout)
    return result.stdout


def render_text(
    values: Obj | None = None,
    *,
    release: str = "rel",
    namespace: str = "imagecache-system",
    kube_version: str | None = VALIDATE_VERSION,
    extra: Iterable[str] = (),
) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    if kube_version:
        args += ["--kube-version", kube_version]
    return helm(*args, values=values)


def render(values: Obj | None = None, **kwargs: Any) -> list[Obj]:
    """The chart's objects (hooks included), in helm's order."""
    return [doc for doc in yaml.safe_load_all(render_text(values, **kwargs)) if doc]


def render_error(values: Obj | None = None, **kwargs: Any) -> str:
    """helm's error text for values that must be refused."""
    try:
        render_text(values, **kwargs)
    except HelmError as error:
        return error.stderr
    raise AssertionError(f"helm template accepted values it must refuse: {values}")


def find(docs: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(docs: Iterable[Obj]) -> list[str]:
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = (
        workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    )
    return spec


def container(workload: Obj, name: str) -> Obj:
    spec = pod_spec(workload)
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        if c["name"] == name:
            found: Obj = c
            return found
    raise AssertionError(
        f"{workload['kind']}/{workload['metadata']['name']} has no container {name}"
    )


def validation_problems(docs: Iterable[Obj], version: str = VALIDATE_VERSION) -> list[str]:
    """Strict schema validation; kinds without a shipped schema (cert-manager's) are listed
    as problems too unless their group is in `UNSCHEMED_GROUPS`."""
    import kubernetes_validate

    problems = []
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        group = doc["apiVersion"].rpartition("/")[0]
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if group not in UNSCHEMED_GROUPS:
                problems.append(f"{what}: no schema for {doc['apiVersion']} in {version}")
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"{what}: {path}: {error.message}")
    return problems


# Custom resources kubernetes-validate has no schema for; tests check them structurally.
UNSCHEMED_GROUPS = {"cert-manager.io"}

# What running a part under its own account needs from the chart.
RBAC_KINDS = frozenset(
    {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
)
FIELD_MANAGER = "helm"


def only_kinds(text: str, keep: Iterable[str]) -> str:
    """The rendered objects of these kinds, as YAML."""
    wanted = set(keep)
    return yaml.safe_dump_all([d for d in yaml.safe_load_all(text) if d and d["kind"] in wanted])


def apply_server_side(plane: ControlPlane, text: str) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --server-side` of rendered YAML, as helm's field manager.

    To run a part under the chart's RBAC (tests/sa_kubeconfig.py for its kubeconfig):

        text = render_text(values, release="rel", namespace=ns, kube_version="1.20.2")
        apply_server_side(plane, only_kinds(text, RBAC_KINDS))
        kubeconfig = service_account_kubeconfig(plane, ns, "rel-imagecache-controller", path)
    """
    return plane.kubectl(
        "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
        "-f", "-", input=text,
    )  # fmt: skip
