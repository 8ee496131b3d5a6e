"""The Helm chart against a real kube-apiserver (v1.20, tests/envtest.py).

The chart, rendered for 1.20, is applied server-side; then every ServiceAccount's rights are
checked with `kubectl auth can-i` (what its part needs, and what it must not do), tokens of
those accounts are used for real, the webhook runs under its own account behind the chart's
webhook entries (pointed at it by URL: there is no cluster network here), the `helm test`
script runs against it, and caBundle is checked to survive an upgrade.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from envtest import ControlPlane, free_port
from helm_chart import (
    CHART,
    HELM_MISSING,
    Obj,
    apply_server_side,
    container,
    find,
    helm,
    helm_binary,
    only_kinds,
    render_text,
)
from sa_kubeconfig import service_account_kubeconfig, service_account_token

from tests.https_probe import https_ok

pytestmark = [pytest.mark.envtest, pytest.mark.skipif(helm_binary() is None, reason=HELM_MISSING)]

RELEASE = "chart"
FULL = "chart-imagecache"
NS = "imc-chart"  # the release namespace
DRYRUN = "imc-dryrun"  # test.namespace: where the helm test makes its dry-run pod
PULL = "imc-pull"  # controller.pullSecretNamespaces
OTHER = "imc-other"  # any other namespace
EXCLUDED = "imc-excluded"  # webhook.excludeNamespaces
AUTO = "imc-auto"  # labelled imagecache.dev/use-image-cache=auto
DISABLED = "imc-disabled"  # labelled imagecache.dev/webhook=disabled
NAMESPACES = [NS, DRYRUN, PULL, OTHER, EXCLUDED, AUTO, DISABLED]
VALUES: Obj = {
    "test": {"namespace": DRYRUN},
    "controller": {"pullSecretNamespaces": [PULL]},
    "webhook": {"excludeNamespaces": [EXCLUDED]},
    "mirror": {"enabled": True},
}


@dataclass
class Installed:
    plane: ControlPlane
    docs: list[Obj]
    text: str
    workdir: Path

    def sa(self, part: str) -> str:
        return f"system:serviceaccount:{NS}:{FULL}-{part}"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def default_account_ready(plane: ControlPlane, namespace: str) -> bool:
    # 1.20's ServiceAccount admission wants the default account (and its token) first.
    out = plane.kubectl(
        "get", "serviceaccount", "default", "-n", namespace, "-o", "jsonpath={.secrets}",
        check=False,
    )  # fmt: skip
    return out.returncode == 0 and bool(out.stdout.strip())


@pytest.fixture(scope="module")
def installed(
    apiserver: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    for namespace in NAMESPACES:
        apiserver.kubectl("create", "namespace", namespace, check=False)
    text = render_text(VALUES, release=RELEASE, namespace=NS, kube_version="1.20.2")
    docs = [d for d in yaml.safe_load_all(text) if d]
    # The webhook configuration points at a Service no one serves here; each test that needs
    # it applies it and removes it again, so it never slows down other tests' pods.
    kinds = {d["kind"] for d in docs} - {"MutatingWebhookConfiguration"}
    apply_server_side(apiserver, only_kinds(text, kinds))
    try:
        yield Installed(apiserver, docs, text, tmp_path_factory.mktemp("chart"))
    finally:
        apiserver.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=text,
                          check=False)  # fmt: skip
        apiserver.kubectl("delete", "namespace", "--wait=false", *NAMESPACES, check=False)


def test_the_chart_for_1_20_is_accepted_server_side(installed: Installed) -> None:
    plane = installed.plane
    config = find(installed.docs, "MutatingWebhookConfiguration")
    try:
        out = apply_server_side(plane, yaml.safe_dump(config))
        assert "serverside-applied" in out.stdout
        for doc in installed.docs:
            kind, name = doc["kind"], doc["metadata"]["name"]
            namespace = doc["metadata"].get("namespace")
            group = doc["apiVersion"].rpartition("/")[0]
            resource = f"{kind.lower()}.{group}" if group else kind.lower()
            args = ["get", resource, name, "-o", "json"] + (["-n", namespace] if namespace else [])
            live = json.loads(plane.kubectl(*args).stdout)
            assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert find(installed.docs, "PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"
        live = json.loads(
            plane.kubectl("get", "mutatingwebhookconfiguration", FULL, "-o", "json").stdout
        )
        hooks = {h["name"]: h for h in live["webhooks"]}
        assert hooks["pods.imagecache.dev"]["failurePolicy"] == "Ignore"
        assert (
            hooks["auto.pods.imagecache.dev"]["clientConfig"]["service"]["path"] == "/mutate/auto"
        )
    finally:
        plane.kubectl("delete", "mutatingwebhookconfiguration", FULL, "--ignore-not-found")


# --- RBAC: kubectl auth can-i as each ServiceAccount ------------------------------------------

IMC = "imagecaches.imagecache.dev"
SNAP = "volumesnapshots.snapshot.storage.k8s.io"
CONTENT = "volumesnapshotcontents.snapshot.storage.k8s.io"
CLASS = "volumesnapshotclasses.snapshot.storage.k8s.io"
MWC = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
ALL = "*all*"  # every namespace (cluster-wide)
CLUSTER = ""  # cluster-scoped resource
NEVER = [  # nobody in the chart may do these
    ("list", "secrets", ALL),
    ("watch", "secrets", ALL),
    ("get", "secrets", OTHER),
    ("list", "secrets", OTHER),
    ("delete", "pods", OTHER),
    ("create", "pods", OTHER),
    ("create", "clusterrolebindings", CLUSTER),
    ("create", "rolebindings", NS),
    ("bind", "clusterroles", CLUSTER),
    ("escalate", "clusterroles", CLUSTER),
    ("create", "clusterroles", CLUSTER),
    ("impersonate", "serviceaccounts", NS),
    ("create", "serviceaccounts#token", NS),
    ("patch", f"{MWC}/other-webhook", CLUSTER),
    ("create", MWC, CLUSTER),
    ("list", MWC, CLUSTER),
    ("delete", f"{MWC}/{FULL}", CLUSTER),
    ("create", IMC, CLUSTER),
    ("get", "nodes", CLUSTER),
    ("create", "pods#exec", NS),
]
CAN: dict[str, list[tuple[str, str, str]]] = {
    "webhook": [("list", IMC, CLUSTER), ("watch", IMC, CLUSTER)],
    "controller": [
        *((verb, IMC, CLUSTER) for verb in ("get", "list", "watch", "patch", "delete")),
        ("patch", f"{IMC}#status", CLUSTER),
        ("update", f"{IMC}#finalizers", CLUSTER),
        *((verb, "pods", ALL) for verb in ("get", "list", "watch")),
        # pods' cache claims (in use) and labelled namespaces (copies before use)
        *((verb, "persistentvolumeclaims", ALL) for verb in ("get", "list", "watch")),
        *((verb, "namespaces", CLUSTER) for verb in ("get", "list", "watch")),
        ("delete", "pods", NS),
        ("create", "events", OTHER),
        ("patch", "events", "default"),
        *((verb, SNAP, OTHER) for verb in ("get", "list", "watch", "create", "delete")),
        *((verb, CONTENT, CLUSTER) for verb in ("get", "list", "watch", "create", "delete")),
        *((verb, CLASS, CLUSTER) for verb in ("get", "list", "watch")),
        *((verb, "jobs.batch", NS) for verb in ("get", "list", "watch", "create", "delete")),
        *(
            (verb, "persistentvolumeclaims", NS)
            for verb in ("get", "list", "watch", "create", "delete")
        ),
        *(
            (verb, "secrets", NS)
            for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
        ),
        ("get", "secrets", PULL),
        *((verb, "leases.coordination.k8s.io", NS) for verb in ("get", "create", "update")),
        *((verb, f"{MWC}/{FULL}", CLUSTER) for verb in ("get", "patch", "update")),
    ],
    "builder": [],
    "mirror": [],
    "test": [("create", "pods", DRYRUN)],
}
CANNOT: dict[str, list[tuple[str, str, str]]] = {
    "webhook": [("get", IMC, CLUSTER), ("patch", IMC, CLUSTER), ("get", "secrets", NS),
                ("list", "pods", ALL), ("get", f"{MWC}/{FULL}", CLUSTER)],
    "controller": [
        ("list", "secrets", PULL), ("watch", "secrets", PULL), ("create", "secrets", OTHER),
        ("delete", "pods", DRYRUN), ("update", "pods", NS), ("patch", "pods#status", NS),
        ("create", "jobs.batch", OTHER), ("create", "persistentvolumeclaims", OTHER),
        ("create", "leases.coordination.k8s.io", OTHER), ("update", IMC, CLUSTER),
        ("patch", SNAP, OTHER), ("create", CLASS, CLUSTER), ("delete", "namespaces", CLUSTER),
    ],
    "builder": [("get", "pods", NS), ("get", "secrets", NS), ("list", IMC, CLUSTER),
                ("create", "pods", NS)],
    "mirror": [("get", "pods", NS), ("get", "secrets", NS), ("list", IMC, CLUSTER)],
    "test": [("get", "pods", DRYRUN), ("create", "pods", NS), ("delete", "pods", DRYRUN)],
}  # fmt: skip


def can_i(plane: ControlPlane, user: str, verb: str, resource: str, where: str) -> bool:
    """`resource` is TYPE, TYPE/NAME or TYPE#SUBRESOURCE; `where` a namespace, ALL or CLUSTER."""
    resource, _, sub = resource.partition("#")
    args = ["auth", "can-i", verb, resource] + ([f"--subresource={sub}"] if sub else [])
    if where == ALL:
        args.append("--all-namespaces")
    elif where:
        args += ["-n", where]
    result = plane.kubectl(*args, f"--as={user}", check=False)
    if result.returncode not in (0, 1) or result.stdout.strip() not in ("yes", "no"):
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}{result.stdout}")
    return result.returncode == 0


@pytest.mark.parametrize("part", sorted(CAN))
def test_each_account_can_do_its_part_and_nothing_dangerous(
    installed: Installed, part: str
) -> None:
    user = installed.sa(part)
    checks = [(True, c) for c in CAN[part]] + [(False, c) for c in CANNOT[part] + NEVER]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda c: can_i(installed.plane, user, *c[1]), checks))
    wrong = [
        f"{'cannot' if expected else 'CAN'} {verb} {resource} in {where or 'cluster'}"
        for (expected, (verb, resource, where)), got in zip(checks, answers, strict=True)
        if got != expected
    ]
    assert wrong == [], f"{user}: " + "; ".join(wrong)


def test_pull_secrets_are_readable_cluster_wide_only_with_a_star(installed: Installed) -> None:
    """Issue 10.4: by default the controller reads Secrets of its own namespace only;
    controller.pullSecretNamespaces: ["*"] opens `get` (never list or watch) everywhere."""
    plane = installed.plane
    user = installed.sa("controller")
    assert not can_i(plane, user, "get", "secrets", OTHER)

    def pull_secret_rbac(values: Obj) -> list[Obj]:
        text = render_text(values, release=RELEASE, namespace=NS, kube_version="1.20.2")
        docs = [d for d in yaml.safe_load_all(text) if d]
        return [d for d in docs if d["metadata"]["name"].endswith("pull-secrets")]

    assert pull_secret_rbac({}) == []
    star = pull_secret_rbac({"controller": {"pullSecretNamespaces": ["*"]}})
    assert sorted(d["kind"] for d in star) == ["ClusterRole", "ClusterRoleBinding"]
    # The installed release already has the ClusterRole (for its RoleBindings): add the binding.
    text = yaml.safe_dump(next(d for d in star if d["kind"] == "ClusterRoleBinding"))
    apply_server_side(plane, text)
    try:
        wait_for(lambda: can_i(plane, user, "get", "secrets", OTHER), "the ClusterRoleBinding")
        assert can_i(plane, user, "get", "secrets", "default")
        assert not can_i(plane, user, "list", "secrets", OTHER)
        assert not can_i(plane, user, "list", "secrets", ALL)
        assert not can_i(plane, user, "watch", "secrets", ALL)
    finally:
        plane.kubectl("delete", "-f", "-", input=text)


def kubectl_as(
    plane: ControlPlane, kubeconfig: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    from envtest import KUBECTL

    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_service_account_tokens_work_with_exactly_those_rights(installed: Installed) -> None:
    plane = installed.plane
    configs = {
        part: service_account_kubeconfig(
            plane, NS, f"{FULL}-{part}", installed.workdir / f"{part}.kubeconfig"
        )
        for part in ("webhook", "controller", "builder")
    }
    ok = kubectl_as(plane, configs["webhook"], "get", IMC)
    assert ok.returncode == 0, ok.stderr
    for part, kubeconfig in configs.items():
        denied = kubectl_as(plane, kubeconfig, "get", "secrets", "--all-namespaces")
        assert denied.returncode != 0 and "Forbidden" in denied.stderr, (part, denied.stderr)
        assert f"system:serviceaccount:{NS}:{FULL}-{part}" in denied.stderr
    own = kubectl_as(plane, configs["controller"], "get", "secrets", "-n", NS)
    assert own.returncode == 0, own.stderr
    nothing = kubectl_as(plane, configs["builder"], "get", "pods", "-n", NS)
    assert nothing.returncode != 0 and "Forbidden" in nothing.stderr


def test_token_helper_refuses_an_unknown_account(installed: Installed) -> None:
    with pytest.raises(AssertionError, match="does not exist"):
        service_account_token(installed.plane, NS, "no-such-account")


# --- the webhook, under its own account, behind the chart's webhook entries -----------------


class LocalWebhook:
    """`imagecache serve` on 127.0.0.1 with the webhook account's kubeconfig."""

    def __init__(self, plane: ControlPlane, workdir: Path, kubeconfig: Path) -> None:
        self.plane = plane
        self.certs = workdir / "certs"
        self.log = workdir / "webhook.log"
        self.port = free_port()
        self.kubeconfig = kubeconfig
        self.process: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [sys.executable, "-m", "webhook", "certs", "generate", "--out", str(self.certs),
             "--ip", "127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "webhook", "serve", "--listen", f"127.0.0.1:{self.port}",
                 "--tls-cert", str(self.certs / "tls.crt"),
                 "--tls-key", str(self.certs / "tls.key"),
                 "--kubeconfig", str(self.kubeconfig), "--caches-from-cluster"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            return https_ok(f"https://127.0.0.1:{self.port}/readyz", self.certs / "ca.crt")

        wait_for(ready, "the webhook to list ImageCaches under its own account")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)

    def configuration(self, chart_config: Obj) -> Obj:
        """The chart's configuration, selectors and all, pointed at this process by URL."""
        config: Obj = json.loads(json.dumps(chart_config))
        config["metadata"]["name"] = f"{FULL}-local"
        bundle = base64.b64encode((self.certs / "ca.crt").read_bytes()).decode()
        for hook in config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {
                "url": f"https://127.0.0.1:{self.port}{path}",
                "caBundle": bundle,
            }
        return config


def dry_run_pod(
    plane: ControlPlane, namespace: str, annotated: bool, labels: dict[str, str]
) -> Obj:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "chart-",
            "labels": labels,
            "annotations": {"imagecache.dev/use-image-cache": "auto"} if annotated else {},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "web", "image": "nginx:1.25"}],
        },
    }
    out = plane.kubectl("create", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-",
                        input=json.dumps(pod))  # fmt: skip
    created: Obj = json.loads(out.stdout)
    return created


def decision(pod: Obj) -> str | None:
    return (pod["metadata"].get("annotations") or {}).get("imagecache.dev/decision")


@pytest.fixture(scope="module")
def local_webhook(installed: Installed) -> Iterator[LocalWebhook]:
    plane = installed.plane
    plane.kubectl("label", "namespace", AUTO, "imagecache.dev/use-image-cache=auto", "--overwrite")
    plane.kubectl("label", "namespace", DISABLED, "imagecache.dev/webhook=disabled", "--overwrite")
    # Kubernetes >= 1.21 labels every namespace with its name; 1.20 does not, so do it here.
    for namespace in (NS, EXCLUDED):
        plane.kubectl("label", "namespace", namespace, f"kubernetes.io/metadata.name={namespace}",
                      "--overwrite")  # fmt: skip
    kubeconfig = service_account_kubeconfig(
        plane, NS, f"{FULL}-webhook", installed.workdir / "wh.kubeconfig"
    )
    hook = LocalWebhook(plane, installed.workdir, kubeconfig)
    hook.start()
    config = hook.configuration(find(installed.docs, "MutatingWebhookConfiguration"))
    try:
        plane.apply(config)
        for namespace in NAMESPACES:
            wait_for(
                lambda ns=namespace: default_account_ready(plane, ns),
                f"default account in {namespace}",
            )
        wait_for(lambda: decision(dry_run_pod(plane, DRYRUN, True, {})) is not None,
                 "the API server to call the webhook")  # fmt: skip
        yield hook
    finally:
        hook.stop()
        plane.kubectl("delete", "mutatingwebhookconfiguration", config["metadata"]["name"],
                      "--ignore-not-found")  # fmt: skip


@pytest.mark.parametrize(
    ("namespace", "annotated", "labels", "decided"),
    [
        (DRYRUN, True, {}, True),  # opted in: decided
        (DRYRUN, False, {}, False),  # not opted in: left alone
        (DRYRUN, True, {"imagecache.dev/skip": "true"}, False),  # objectSelector
        (AUTO, False, {}, True),  # the namespace opts in: /mutate/auto
        (AUTO, True, {"imagecache.dev/skip": "true"}, False),
        (DISABLED, True, {}, False),  # imagecache.dev/webhook=disabled
        (EXCLUDED, True, {}, False),  # webhook.excludeNamespaces
        (NS, True, {}, False),  # the release namespace
    ],
)
def test_chart_webhook_entries_select_the_right_pods(
    installed: Installed, local_webhook: LocalWebhook, namespace: str, annotated: bool,
    labels: dict[str, str], decided: bool,
) -> None:  # fmt: skip
    pod = dry_run_pod(installed.plane, namespace, annotated, labels)
    assert (decision(pod) is not None) == decided, pod["metadata"]


def run_helm_test_script(installed: Installed) -> subprocess.CompletedProcess[str]:
    """The helm test pod's script, run here as the pod would: with the test account's token."""
    pod = find(installed.docs, "Pod")
    script = container(pod, "decision")["command"]
    assert script[:2] == ["python", "-c"]
    sa_dir = installed.workdir / "test-sa"
    sa_dir.mkdir(exist_ok=True)
    (sa_dir / "token").write_text(service_account_token(installed.plane, NS, f"{FULL}-test"))
    (sa_dir / "ca.crt").write_bytes(installed.plane.ca_file.read_bytes())
    env = {e["name"]: e["value"] for e in container(pod, "decision")["env"]}
    host, port = installed.plane.url.removeprefix("https://").rsplit(":", 1)
    env |= {"SA_DIR": str(sa_dir), "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
            "PATH": os.environ["PATH"]}  # fmt: skip
    return subprocess.run([sys.executable, "-c", script[2]], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_helm_test_script_passes_when_the_webhook_answers_and_fails_when_it_does_not(
    installed: Installed, local_webhook: LocalWebhook
) -> None:
    result = run_helm_test_script(installed)
    assert result.returncode == 0, result.stderr
    assert "ok: the webhook decided" in result.stdout and DRYRUN in result.stdout
    local_webhook.stop()
    try:
        failed = run_helm_test_script(installed)
        assert failed.returncode == 1
        assert "FAIL: no imagecache.dev/decision" in failed.stderr
        assert "caBundle" in failed.stderr
    finally:
        local_webhook.start()


# --- caBundle survives an upgrade -------------------------------------------------------------

UPGRADE_NS = "imc-upgrade"
UPGRADE_RELEASE = "upgrade"


def test_helm_upgrade_keeps_the_ca_bundle_the_controller_wrote(installed: Installed) -> None:
    plane = installed.plane
    name = f"{UPGRADE_RELEASE}-imagecache"
    kube = ["--namespace", UPGRADE_NS, "--kubeconfig", str(plane.kubeconfig)]
    values = {"test": {"namespace": DRYRUN}}

    def live_bundles() -> list[str | None]:
        got = plane.kubectl("get", "mutatingwebhookconfiguration", name, "-o", "json")
        return [h["clientConfig"].get("caBundle") for h in json.loads(got.stdout)["webhooks"]]

    notes = helm("install", UPGRADE_RELEASE, str(CHART), "--create-namespace", *kube, values=values)
    try:
        # NOTES.txt, rendered against this 1.20 cluster.
        assert f"helm test {UPGRADE_RELEASE} -n {UPGRADE_NS}" in notes
        assert "does not label namespaces with kubernetes.io/metadata.name" in notes
        assert "Node mirror" not in notes  # mirror.enabled is false
        assert live_bundles() == [None, None]  # the controller has not started
        bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nfrom the controller\n").decode()
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i in range(2)
        ]
        plane.kubectl("patch", "mutatingwebhookconfiguration", name, "--type=json",
                      f"-p={json.dumps(patch)}",
                      "--field-manager=imagecache-controller")  # fmt: skip
        values["webhook"] = {"timeoutSeconds": 5}  # an upgrade that changes the configuration
        helm("upgrade", UPGRADE_RELEASE, str(CHART), *kube, values=values)
        got = json.loads(
            plane.kubectl("get", "mutatingwebhookconfiguration", name, "-o", "json").stdout
        )
        assert [h["timeoutSeconds"] for h in got["webhooks"]] == [5, 5]
        assert live_bundles() == [bundle, bundle]
        # The looked-up value is in the render itself, so even replacing the whole object
        # (what `helm upgrade --force-replace` does) keeps it.
        only = ["--show-only", "templates/webhook-configuration.yaml"]
        looked_up = helm("template", UPGRADE_RELEASE, str(CHART), "--dry-run=server", *only,
                         *kube, values=values)  # fmt: skip
        hooks = yaml.safe_load(looked_up)["webhooks"]
        assert [h["clientConfig"]["caBundle"] for h in hooks] == [bundle, bundle]
        plane.kubectl("replace", "-f", "-", input=looked_up)
        assert live_bundles() == [bundle, bundle]
        # The render without a cluster (`helm template`) has no caBundle: replacing the live
        # object with it drops the controller's, which is why the chart looks it up.
        offline = render_text(values, release=UPGRADE_RELEASE, namespace=UPGRADE_NS, extra=only)
        plane.kubectl("replace", "-f", "-", input=offline)
        assert live_bundles() == [None, None]
    finally:
        try:
            helm("uninstall", UPGRADE_RELEASE, *kube)
        finally:
            plane.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        plane.kubectl("delete", "namespace", UPGRADE_NS, "--wait=false", check=False)
