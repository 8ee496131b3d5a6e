"""The Helm chart, offline: helm lint, helm template with each option, strict validation of
every rendered object against Kubernetes' schemas, the values schema refusing bad values, and
the rendered containers' arguments parsed by the parts' own argument parsers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import (
    CHART,
    HELM_MISSING,
    REPO_ROOT,
    Obj,
    container,
    find,
    helm,
    helm_binary,
    kinds,
    pod_spec,
    render,
    render_error,
    validation_problems,
)

pytestmark = pytest.mark.skipif(helm_binary() is None, reason=HELM_MISSING)

NS = "imagecache-system"
FULL = "rel-imagecache"
NAMESPACE = "imagecache-system"  # helm_chart.render_text's release namespace
OPTIONS: dict[str, Obj] = {
    "default": {},
    "certManager": {"certManager": {"enabled": True}},
    "mirror": {
        "mirror": {
            "enabled": True,
            "registries": ["docker.io", "ghcr.io", "registry.local:5000"],
            "plainHttpRegistries": ["registry.local:5000"],
            "port": 5123,
        }
    },
    "snapshotter": {"mirror": {"enabled": True}, "snapshotter": {"enabled": True}},
    "pullSecretNamespaces": {"controller": {"pullSecretNamespaces": ["team-a", "team-b", NS]}},
    "replicas": {
        "webhook": {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}},
        "controller": {"replicaCount": 2},
    },
    "excludeNamespaces": {
        "webhook": {
            "excludeNamespaces": ["monitoring", "istio-system"],
            "namespaceSelector": {
                "extraMatchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["infra"]}]
            },
            "objectSelector": {
                "extraMatchExpressions": [{"key": "batch", "operator": "DoesNotExist"}]
            },
        }
    },
    "everything": {
        "certManager": {"enabled": True},
        "mirror": {"enabled": True},
        "controller": {"pullSecretNamespaces": ["team-a"], "replicaCount": 2},
        "imagePullSecrets": [{"name": "regcred"}],
        "image": {"repository": "registry.example.com/imagecache", "digest": "sha256:" + "a" * 64},
        "builder": {"storageClassName": "csi-hostpath-sc", "volumeSnapshotClassName": "snap"},
        "commonLabels": {"team": "platform"},
        "webhook": {"podAnnotations": {"a": "b"}, "priorityClassName": "system-cluster-critical"},
    },
}


@cache
def rendered(option: str) -> list[Obj]:
    return render(OPTIONS[option])


def webhook_configuration(docs: list[Obj]) -> Obj:
    return find(docs, "MutatingWebhookConfiguration")


def expressions(selector: Obj) -> dict[str, tuple[str, list[str]]]:
    return {e["key"]: (e["operator"], e.get("values", [])) for e in selector["matchExpressions"]}


# --- lint and validation -------------------------------------------------------------------


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_helm_lint_strict_passes(option: str) -> None:
    out = helm("lint", "--strict", str(CHART), "--namespace", NS, values=OPTIONS[option])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_rendered_object_validates_strictly(option: str) -> None:
    docs = rendered(option)
    assert validation_problems(docs) == []


def test_the_crd_ships_with_the_chart_and_validates() -> None:
    docs = render({}, extra=["--include-crds"])
    crd = find(docs, "CustomResourceDefinition", "imagecaches.imagecache.dev")
    assert validation_problems([crd]) == []


def test_strict_validation_catches_a_misspelled_field() -> None:
    # The validator itself must be able to fail, or the test above proves nothing.
    deployment = json.loads(json.dumps(find(rendered("default"), "Deployment", f"{FULL}-webhook")))
    pod_spec(deployment)["containers"][0]["readinesProbe"] = {}
    problems = validation_problems([deployment])
    assert problems and "readinesProbe" in problems[0]


def test_default_render_has_exactly_the_expected_objects() -> None:
    assert kinds(rendered("default")) == sorted(
        [
            f"ClusterRole/{FULL}-controller",
            f"ClusterRole/{FULL}-controller-webhook-config",
            f"ClusterRole/{FULL}-webhook",
            f"ClusterRoleBinding/{FULL}-controller",
            f"ClusterRoleBinding/{FULL}-controller-webhook-config",
            f"ClusterRoleBinding/{FULL}-webhook",
            f"Deployment/{FULL}-controller",
            f"Deployment/{FULL}-webhook",
            f"MutatingWebhookConfiguration/{FULL}",
            f"Pod/{FULL}-test-decision",
            f"PodDisruptionBudget/{FULL}-webhook",
            f"Role/{FULL}-controller",
            f"Role/{FULL}-test",
            f"RoleBinding/{FULL}-controller",
            f"RoleBinding/{FULL}-test",
            f"Service/{FULL}-webhook",
            f"ServiceAccount/{FULL}-builder",
            f"ServiceAccount/{FULL}-controller",
            f"ServiceAccount/{FULL}-test",
            f"ServiceAccount/{FULL}-webhook",
        ]
    )


def test_every_object_carries_the_recommended_labels() -> None:
    for doc in rendered("everything"):
        labels = doc["metadata"]["labels"]
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "imagecache", what
        assert labels["app.kubernetes.io/instance"] == "rel", what
        assert labels["app.kubernetes.io/managed-by"] == "Helm", what
        assert labels["app.kubernetes.io/part-of"] == "imagecache", what
        assert labels["app.kubernetes.io/version"] == "0.1.0", what
        assert labels["app.kubernetes.io/component"], what
        assert labels["team"] == "platform", what


# --- the webhook configuration: DESIGN.md "Defaults that protect the cluster" ---------------


def test_webhook_configuration_has_the_protective_defaults() -> None:
    config = webhook_configuration(rendered("default"))
    hooks = {h["name"]: h for h in config["webhooks"]}
    assert list(hooks) == ["pods.imagecache.dev", "auto.pods.imagecache.dev"]
    for name, path, operator in [
        ("pods.imagecache.dev", "/mutate", "NotIn"),
        ("auto.pods.imagecache.dev", "/mutate/auto", "In"),
    ]:
        hook = hooks[name]
        assert hook["failurePolicy"] == "Ignore"
        assert hook["timeoutSeconds"] == 3
        assert hook["sideEffects"] == "None"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
        assert hook["rules"] == [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        assert hook["clientConfig"] == {
            "service": {"name": f"{FULL}-webhook", "namespace": NS, "path": path, "port": 443}
        }, "helm template renders no caBundle: the controller injects it"
        ns = expressions(hook["namespaceSelector"])
        assert ns["kubernetes.io/metadata.name"] == ("NotIn", ["kube-system", NS])
        assert ns["imagecache.dev/webhook"] == ("NotIn", ["disabled"])
        assert ns["imagecache.dev/use-image-cache"] == (operator, ["auto"])
        assert expressions(hook["objectSelector"]) == {"imagecache.dev/skip": ("NotIn", ["true"])}


def test_excluded_namespaces_and_extra_selectors_are_added_to_both_entries() -> None:
    for hook in webhook_configuration(rendered("excludeNamespaces"))["webhooks"]:
        ns = expressions(hook["namespaceSelector"])
        assert ns["kubernetes.io/metadata.name"] == (
            "NotIn",
            ["kube-system", NS, "monitoring", "istio-system"],
        )
        assert ns["tier"] == ("NotIn", ["infra"])
        assert len(ns) == 4
        assert expressions(hook["objectSelector"]) == {
            "imagecache.dev/skip": ("NotIn", ["true"]),
            "batch": ("DoesNotExist", []),
        }


@pytest.mark.parametrize(
    ("values", "field", "expected"),
    [
        ({"webhook": {"failurePolicy": "Fail"}}, "failurePolicy", "Fail"),
        ({"webhook": {"timeoutSeconds": 10}}, "timeoutSeconds", 10),
        ({"webhook": {"reinvocationPolicy": "Never"}}, "reinvocationPolicy", "Never"),
    ],
)
def test_webhook_settings_come_from_values(values: Obj, field: str, expected: Any) -> None:
    for hook in webhook_configuration(render(values))["webhooks"]:
        assert hook[field] == expected


def test_the_chart_s_own_pods_are_never_sent_to_the_webhook() -> None:
    docs = rendered("everything")
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert labels["imagecache.dev/skip"] == "true", doc["metadata"]["name"]
    assert find(docs, "Pod")["metadata"]["labels"]["imagecache.dev/skip"] == "true"


def test_cert_manager_mode_annotates_for_ca_injection_and_drops_controller_cert_flags() -> None:
    docs = rendered("certManager")
    config = webhook_configuration(docs)
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NS}/{FULL}-webhook"
    }
    args = container(find(docs, "Deployment", f"{FULL}-controller"), "controller")["args"]
    assert not [a for a in args if a.startswith("--webhook-")]
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"}
    assert f"{FULL}-controller-webhook-config" not in names


def test_cert_manager_chain_issues_the_secret_the_webhook_mounts() -> None:
    docs = rendered("certManager")
    by_name = {
        (d["kind"], d["metadata"]["name"]): d for d in docs if "cert-manager" in d["apiVersion"]
    }
    selfsigned = by_name[("Issuer", f"{FULL}-selfsigned")]
    ca = by_name[("Certificate", f"{FULL}-ca")]
    ca_issuer = by_name[("Issuer", f"{FULL}-ca")]
    serving = by_name[("Certificate", f"{FULL}-webhook")]
    assert len(by_name) == 4
    assert selfsigned["spec"] == {"selfSigned": {}}
    assert ca["spec"]["isCA"] is True
    assert ca["spec"]["issuerRef"] == {"kind": "Issuer", "name": f"{FULL}-selfsigned"}
    assert ca_issuer["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    assert serving["spec"]["issuerRef"] == {"kind": "Issuer", "name": f"{FULL}-ca"}
    assert serving["spec"]["dnsNames"] == [
        f"{FULL}-webhook",
        f"{FULL}-webhook.{NS}",
        f"{FULL}-webhook.{NS}.svc",
        f"{FULL}-webhook.{NS}.svc.cluster.local",
    ]
    assert "server auth" in serving["spec"]["usages"]
    # The annotation names the serving Certificate, whose Secret the webhook pods mount.
    annotation = webhook_configuration(docs)["metadata"]["annotations"]
    assert annotation["cert-manager.io/inject-ca-from"] == f"{NS}/{serving['metadata']['name']}"
    volumes = pod_spec(find(docs, "Deployment", f"{FULL}-webhook"))["volumes"]
    assert {
        "name": "certs",
        "secret": {"secretName": serving["spec"]["secretName"], "optional": False},
    } in volumes
    for doc in by_name.values():
        assert doc["metadata"]["namespace"] == NS


# --- workloads ---------------------------------------------------------------------------


def test_webhook_deployment_is_highly_available_and_probed_over_https() -> None:
    docs = rendered("default")
    deployment = find(docs, "Deployment", f"{FULL}-webhook")
    spec = pod_spec(deployment)
    assert deployment["spec"]["replicas"] == 2
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == deployment["spec"]["selector"]["matchLabels"]
    )
    webhook = container(deployment, "webhook")
    assert webhook["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "https",
        "scheme": "HTTPS",
    }
    assert webhook["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "https",
        "scheme": "HTTPS",
    }
    assert webhook["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    assert webhook["resources"]["requests"] and webhook["resources"]["limits"]
    mounts = {m["name"]: m for m in webhook["volumeMounts"]}
    assert mounts["certs"] == {"name": "certs", "mountPath": "/certs", "readOnly": True}
    assert {
        "name": "certs",
        "secret": {"secretName": f"{FULL}-webhook-tls", "optional": False},
    } in spec["volumes"]
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}
    service = find(docs, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]


def test_pdb_is_policy_v1beta1_on_kubernetes_1_20() -> None:
    docs = render({}, kube_version="1.20.2")
    assert find(docs, "PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"


@pytest.mark.parametrize("option", ["default", "everything"])
def test_every_container_is_hardened(option: str) -> None:
    for doc in rendered(option):
        if doc["kind"] not in ("Deployment", "DaemonSet", "Pod"):
            continue
        spec = pod_spec(doc)
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            what = f"{doc['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["capabilities"]["drop"] == ["ALL"], what
            assert "privileged" not in sc, what
            if doc["kind"] != "DaemonSet":
                assert spec["securityContext"]["runAsNonRoot"] is True, what
                assert spec["securityContext"]["runAsUser"] == 65532, what
                assert "add" not in sc["capabilities"], what


def test_the_mirror_runs_on_the_host_network_reading_kubelet_pods_read_only() -> None:
    docs = rendered("mirror")
    daemonset = find(docs, "DaemonSet")
    spec = pod_spec(daemonset)
    assert spec["hostNetwork"] is True
    assert spec["automountServiceAccountToken"] is False
    assert spec["tolerations"] == [{"operator": "Exists"}]
    mirror = container(daemonset, "mirror")
    assert mirror["args"][:4] == ["mirror", "serve", "--listen", "127.0.0.1:5123"]
    assert mirror["volumeMounts"] == [
        {
            "name": "kubelet-pods",
            "mountPath": "/var/lib/kubelet/pods",
            "readOnly": True,
            "mountPropagation": "HostToContainer",
        }
    ]
    # hostNetwork: the kubelet probes the node's own loopback, where the mirror listens.
    assert mirror["readinessProbe"]["httpGet"] == {
        "host": "127.0.0.1",
        "path": "/v2/",
        "port": 5123,
    }
    assert mirror["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["DAC_READ_SEARCH"],
    }
    configure = container(daemonset, "configure-containerd")
    assert configure["args"] == [
        "mirror", "configure", "--config-path", "/etc/containerd/certs.d",
        "--registry", "docker.io", "--registry", "ghcr.io", "--registry", "registry.local:5000",
        "--mirror", "http://127.0.0.1:5123", "--plain-http", "registry.local:5000",
    ]  # fmt: skip
    assert configure["volumeMounts"] == [
        {"name": "containerd-certs", "mountPath": "/etc/containerd/certs.d"}
    ]
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"]}
    assert volumes == {
        "kubelet-pods": {"path": "/var/lib/kubelet/pods", "type": "Directory"},
        "containerd-certs": {"path": "/etc/containerd/certs.d", "type": "DirectoryOrCreate"},
    }
    assert "kubernetes.io/metadata.name" not in json.dumps(daemonset)  # no selector leaked in
    assert find(docs, "ServiceAccount", f"{FULL}-mirror")["automountServiceAccountToken"] is False
    assert not [d for d in rendered("default") if d["kind"] == "DaemonSet"]


def _kubelet_pods(values: Obj) -> tuple[str, str, str]:
    """(--root, mount path, host path) of the node DaemonSet rendered with `values`."""
    daemonset = find(render({"mirror": {"enabled": True}, **values}), "DaemonSet")
    mirror = container(daemonset, "mirror")
    (mount,) = [m["mountPath"] for m in mirror["volumeMounts"] if m["name"] == "kubelet-pods"]
    (host,) = [v["hostPath"]["path"] for v in pod_spec(daemonset)["volumes"]
               if v["name"] == "kubelet-pods"]  # fmt: skip
    return mirror["args"][mirror["args"].index("--root") + 1], mount, host


def test_the_kubelet_directory_is_one_top_level_value_for_every_node_part() -> None:
    """Issue 12: kubelets run with other root directories (k3s, microk8s, --root-dir)."""
    assert _kubelet_pods({}) == ("/var/lib/kubelet/pods",) * 3
    assert _kubelet_pods({"kubeletDir": "/data/k8s/kubelet/"}) == ("/data/k8s/kubelet/pods",) * 3
    # The old spelling still works (deprecated), and wins when given.
    old = {"kubeletDir": "/ignored", "mirror": {"enabled": True, "kubeletDir": "/var/snap/k"}}
    assert _kubelet_pods(old) == ("/var/snap/k/pods",) * 3
    assert "kubeletDir" in render_error({"kubeletDir": "relative/dir"})


def test_the_mirror_serves_tags_only_when_asked() -> None:
    """Issue 10.5: by digest only by default; mirror.serveTags for pools where all opt in."""
    for serve_tags in (False, True):
        daemonset = find(render({"mirror": {"enabled": True, "serveTags": serve_tags}}),
                         "DaemonSet")  # fmt: skip
        for name in ("mirror", "configure-containerd"):
            assert ("--serve-tags" in container(daemonset, name)["args"]) is serve_tags


def test_the_snapshotter_runs_beside_the_mirror_with_host_paths() -> None:
    """snapshotter.enabled: the snapshotter container (privileged; containerd mounts the
    paths it answers, so each directory is at its host path) and builds that unpack layers."""
    docs = rendered("snapshotter")
    daemonset = find(docs, "DaemonSet")
    snap = container(daemonset, "snapshotter")
    assert snap["args"] == [
        "snapshotter", "serve", "--supervise", "--socket", "/run/imagecache/snapshotter.sock",
        "--root", "/var/lib/imagecache/snapshotter", "--disks-root", "/var/lib/kubelet/pods",
        "--glob", "*/volumes/kubernetes.io~csi/*/mount", "--metrics-listen", "127.0.0.1:5006",
        "--containerd-socket", "/run/containerd/containerd.sock",
        "--disk-origin", "api", "--controller-namespace", NAMESPACE, "--log-level", "info",
        "--log-format", "json",
    ]  # fmt: skip
    assert snap["securityContext"]["privileged"] is True
    mounts = {m["name"]: m for m in snap["volumeMounts"]}
    assert mounts["kubelet-pods"]["mountPropagation"] == "HostToContainer"
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod_spec(daemonset)["volumes"]
               if "hostPath" in v}
    for name, mount in mounts.items():
        if name != "snapshotter-api":  # the API token (projected), not a host path
            assert mount["mountPath"] == volumes[name], name  # host path == container path
    assert mounts["containerd-socket"]["mountPath"] == "/run/containerd"
    controller = container(find(docs, "Deployment", f"{FULL}-controller"), "controller")
    assert "--builder-layers" in controller["args"]
    default = container(find(rendered("mirror"), "Deployment", f"{FULL}-controller"),
                        "controller")
    assert "--builder-layers" not in default["args"]
    assert [c["name"] for c in pod_spec(find(rendered("mirror"), "DaemonSet"))[
        "containers"]] == ["mirror"]
    # cache disks are looked for where the mirror looks (local-PV clones, say)
    local = "*/volumes/kubernetes.io~local-volume/*"
    globs = render({"mirror": {"enabled": True, "diskGlobs": [local]},
                    "snapshotter": {"enabled": True}})
    args = container(find(globs, "DaemonSet"), "snapshotter")["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--glob"] == [local]
    assert "snapshotter.enabled needs mirror.enabled" in render_error(
        {"snapshotter": {"enabled": True}})


def test_the_snapshotter_can_be_told_where_the_api_is() -> None:
    """hostNetwork on a node with no kube-proxy (or the test node, whose 10.0.0.1 is not
    routed from the host's network): snapshotter.kubernetesServiceHost/Port reach the
    container as the variables in-cluster clients read; unset, the Service's are kept."""
    assert "env" not in container(find(rendered("snapshotter"), "DaemonSet"), "snapshotter")
    docs = render({"mirror": {"enabled": True},
                   "snapshotter": {"enabled": True, "kubernetesServiceHost": "127.0.0.1",
                                   "kubernetesServicePort": 6443}})
    env = container(find(docs, "DaemonSet"), "snapshotter")["env"]
    assert env == [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                   {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}]


def test_the_snapshotter_checks_disk_origin_with_a_token_of_its_own() -> None:
    """Issue 11 (disk origin): `get` on the five kinds behind a volume, bound to the mirror's
    account; the token is mounted in the snapshotter container only. verifyDiskOrigin=false
    drops both and says so on the command line (--disk-origin any)."""
    docs = rendered("snapshotter")
    role = find(docs, "ClusterRole", f"{FULL}-mirror-snapshotter")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["persistentvolumes", "persistentvolumeclaims", "pods"],
         "verbs": ["get"]},
        {"apiGroups": ["snapshot.storage.k8s.io"],
         "resources": ["volumesnapshots", "volumesnapshotcontents"], "verbs": ["get"]},
    ]  # fmt: skip
    binding = find(docs, "ClusterRoleBinding", f"{FULL}-mirror-snapshotter")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULL}-mirror",
                                    "namespace": NAMESPACE}]  # fmt: skip
    daemonset = find(docs, "DaemonSet")
    assert pod_spec(daemonset)["automountServiceAccountToken"] is False
    token = "/var/run/secrets/kubernetes.io/serviceaccount"
    snap_mounts = [m["mountPath"] for m in container(daemonset, "snapshotter")["volumeMounts"]]
    assert token in snap_mounts
    assert token not in [m["mountPath"] for m in container(daemonset, "mirror")["volumeMounts"]]
    off = render({"mirror": {"enabled": True},
                  "snapshotter": {"enabled": True, "verifyDiskOrigin": False}})
    assert not [d for d in off if d["kind"] == "ClusterRole" and "snapshotter" in d[
        "metadata"]["name"]]
    args = container(find(off, "DaemonSet"), "snapshotter")["args"]
    assert args[args.index("--disk-origin") + 1] == "any"
    assert "snapshotter-api" not in [v["name"] for v in pod_spec(find(off, "DaemonSet"))[
        "volumes"]]


def test_controller_gets_its_namespace_from_the_downward_api() -> None:
    controller = container(
        find(rendered("default"), "Deployment", f"{FULL}-controller"), "controller"
    )
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in controller["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    assert controller["args"][1:3] == ["--namespace", "$(POD_NAMESPACE)"]


def test_images_come_from_values() -> None:
    docs = rendered("everything")
    ref = "registry.example.com/imagecache@sha256:" + "a" * 64
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet", "Pod"):
            spec = pod_spec(doc)
            assert spec["imagePullSecrets"] == [{"name": "regcred"}]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                assert c["image"] == ref
    args = container(find(docs, "Deployment", f"{FULL}-controller"), "controller")["args"]
    assert args[args.index("--builder-image") + 1] == ref
    builder = render({"builder": {"image": {"tag": "v2"}}, "image": {"tag": "v1"}})
    args = container(find(builder, "Deployment", f"{FULL}-controller"), "controller")["args"]
    assert args[args.index("--builder-image") + 1] == "imagecache:v2"
    webhook = container(find(builder, "Deployment", f"{FULL}-webhook"), "webhook")
    assert webhook["image"] == "imagecache:v1"


# --- arguments: the parts' own parsers must accept what the chart passes -------------------



def _parsers() -> dict[str, Callable[[list[str]], tuple[Any, list[str]]]]:
    from webhook.controller import command as controller
    from webhook.mirror import command as mirror
    from webhook.server import command as server
    from webhook.snapshotter import command as snapshotter

    return {
        "snapshotter": lambda a: (snapshotter.parser().parse_args(a), []),
        "serve": lambda a: (server.parser().parse_args(a), []),
        "controller": lambda a: (controller.parser().parse_args(a), []),
        "mirror": lambda a: (mirror.parser().parse_args(a), []),
    }


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_rendered_arguments_parse_with_the_real_command_line(option: str) -> None:
    parsers = _parsers()
    seen = set()
    for doc in rendered(option):
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        spec = pod_spec(doc)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            command, *rest = c["args"]
            parsed, unknown = parsers[command](rest)
            seen.add(command)
            assert unknown == [], f"{c['name']}: unknown arguments {unknown}"
            if command == "controller":
                assert parsed.builder_service_account == f"{FULL}-builder"
                assert parsed.leader_elect is True
                assert parsed.lease_name == f"{FULL}-controller"
                assert (parsed.log_level, parsed.log_format) == ("info", "json")
            if command == "serve":
                assert parsed.caches_from_cluster is True
                assert str(parsed.tls_cert) == "/certs/tls.crt"
                assert parsed.listen == ("0.0.0.0", 8443)
    assert {"serve", "controller"} <= seen


def test_controller_arguments_carry_the_builder_and_certificate_settings() -> None:
    values = {
        "builder": {
            "cpu": "500m",
            "memory": "1Gi",
            "storageClassName": "fast",
            "volumeSnapshotClassName": "snap",
            "defaultCacheSizeGiB": 0,
            "platforms": ["linux/amd64", "linux/arm64"],
            "buildDeadlineSeconds": 900,
            "backoffLimit": 2,
        },
        "controller": {"cacheSelector": "tier=web", "leaderElection": {"leaseName": "my-lease"}},
        "logLevel": "debug",
    }
    args = container(find(render(values), "Deployment", f"{FULL}-controller"), "controller")["args"]
    from webhook.controller.command import parser

    parsed = parser().parse_args(args[1:])
    assert (parsed.builder_cpu, parsed.builder_memory) == ("500m", "1Gi")
    assert parsed.builder_cpu_limit == "2"  # the default: a request that fits, a limit
    assert (parsed.storage_class, parsed.snapshot_class) == ("fast", "snap")
    assert parsed.default_cache_size == 0
    assert parsed.platforms == ["linux/amd64", "linux/arm64"]
    assert (parsed.build_deadline, parsed.backoff_limit) == (900, 2)
    assert parsed.cache_selector == "tier=web"
    assert parsed.lease_name == "my-lease"
    assert parsed.log_level == "debug"
    assert (parsed.webhook_configuration, parsed.webhook_secret, parsed.webhook_service) == (
        FULL,
        f"{FULL}-webhook-tls",
        f"{FULL}-webhook",
    )


def test_leader_election_off_renders_no_lease_flags() -> None:
    args = container(
        find(
            render({"controller": {"leaderElection": {"enabled": False}}}),
            "Deployment",
            f"{FULL}-controller",
        ),
        "controller",
    )["args"]
    assert "--no-leader-elect" in args and "--lease-name" not in args


# --- RBAC ----------------------------------------------------------------------------------


def rules_of(docs: list[Obj], kind: str, name: str) -> list[Obj]:
    rules: list[Obj] = find(docs, kind, name)["rules"]
    return rules


def test_webhook_may_only_list_and_watch_imagecaches() -> None:
    assert rules_of(rendered("default"), "ClusterRole", f"{FULL}-webhook") == [
        {"apiGroups": ["imagecache.dev"], "resources": ["imagecaches"], "verbs": ["list", "watch"]}
    ]


def test_no_cluster_wide_secret_listing_and_no_wildcards() -> None:
    for option in OPTIONS:
        for doc in rendered(option):
            if doc["kind"] not in ("ClusterRole", "Role"):
                continue
            for rule in doc["rules"]:
                what = f"{option}: {doc['kind']}/{doc['metadata']['name']}"
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], what
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), what
                if doc["kind"] == "ClusterRole" and "secrets" in rule["resources"]:
                    assert rule["verbs"] == ["get"], what


def test_pull_secret_namespaces_become_role_bindings() -> None:
    docs = rendered("pullSecretNamespaces")
    bindings = [d for d in docs if d["metadata"]["name"] == f"{FULL}-controller-pull-secrets"]
    assert sorted((d["kind"], d["metadata"].get("namespace")) for d in bindings) == [
        ("ClusterRole", None),
        ("RoleBinding", "team-a"),
        ("RoleBinding", "team-b"),  # the release namespace is covered by the controller's Role
    ]
    args = container(find(docs, "Deployment", f"{FULL}-controller"), "controller")["args"]
    assert args[args.index("--pull-secret-namespace") :].count("--pull-secret-namespace") == 2
    # Issue 10.4: by default only the release namespace (the controller's Role): no binding.
    default = [
        d for d in rendered("default") if d["metadata"]["name"] == f"{FULL}-controller-pull-secrets"
    ]
    assert default == []
    args = container(find(rendered("default"), "Deployment", f"{FULL}-controller"), "controller")[
        "args"
    ]
    assert "--pull-secret-namespace" not in args
    anywhere = [
        d
        for d in render({"controller": {"pullSecretNamespaces": ["*"]}})
        if d["metadata"]["name"] == f"{FULL}-controller-pull-secrets"
    ]
    assert sorted(d["kind"] for d in anywhere) == ["ClusterRole", "ClusterRoleBinding"]


def test_webhook_configuration_rights_are_limited_to_the_chart_s_own() -> None:
    rules = rules_of(rendered("default"), "ClusterRole", f"{FULL}-controller-webhook-config")
    assert rules == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [FULL],
            "verbs": ["get", "patch", "update"],
        }
    ]


def test_controller_rbac_covers_every_resource_the_controller_code_touches() -> None:
    """Kinds the controller's code uses (informers, creates, deletes, Events, the Lease) must
    each have a rule; a new kind in the code without RBAC fails here, not in a cluster."""
    from webhook.kube import client as kube

    by_kind = {r.kind: r for r in kube.RESOURCES.values()}
    by_const = {
        name: getattr(kube, name)
        for name in dir(kube)
        if isinstance(getattr(kube, name), kube.Resource)
    }
    used: set[str] = set()
    for path in (REPO_ROOT / "webhook" / "controller").glob("*.py"):
        text = path.read_text()
        used |= {by_const[c].plural for c in re.findall(r"\bk\.([A-Z_]+)\b", text) if c in by_const}
        used |= {
            by_const[c].plural
            for c in re.findall(r"\b(LEASE|SECRET|POD|JOB)\b", text)
            if c in by_const
        }
    for path in (REPO_ROOT / "webhook" / "controller" / "core").glob("*.py"):
        if path.name.startswith(("manifests_", "reconcile_")):
            for kind in re.findall(r'"kind": "(\w+)"', path.read_text()):
                if kind in by_kind:
                    used.add(by_kind[kind].plural)
    assert {
        "imagecaches", "jobs", "pods", "persistentvolumeclaims", "secrets", "events", "leases",
        "volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses",
    } <= used  # fmt: skip
    docs = rendered("default")
    granted = {
        res
        for name, kind in [(f"{FULL}-controller", "ClusterRole"), (f"{FULL}-controller", "Role")]
        for rule in rules_of(docs, kind, name)
        for res in rule["resources"]
    }
    assert used - granted == set()


# --- values: schema, defaults, documentation ------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"webhok": {"replicaCount": 2}}, "additional properties 'webhok' not allowed"),
        (
            {"webhook": {"replicas": 2}},
            "at '/webhook': additional properties 'replicas' not allowed",
        ),
        (
            {"mirror": {"enabled": True, "prot": 1}},
            "at '/mirror': additional properties 'prot' not allowed",
        ),
        ({"webhook": {"replicaCount": -1}}, "at '/webhook/replicaCount': minimum: got -1, want 1"),
        (
            {"controller": {"replicaCount": -2}},
            "at '/controller/replicaCount': minimum: got -2, want 0",
        ),
        (
            {"webhook": {"failurePolicy": "Ignored"}},
            "at '/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'",
        ),
        (
            {"webhook": {"timeoutSeconds": 31}},
            "at '/webhook/timeoutSeconds': maximum: got 31, want 30",
        ),
        (
            {"webhook": {"timeoutSeconds": 0}},
            "at '/webhook/timeoutSeconds': minimum: got 0, want 1",
        ),
        (
            {"webhook": {"timeoutSeconds": "3"}},
            "at '/webhook/timeoutSeconds': got string, want integer",
        ),
        ({"webhook": {"reinvocationPolicy": "Always"}}, "value must be one of 'IfNeeded', 'Never'"),
        ({"image": {"tag": "1.0:latest"}}, "at '/image/tag': '1.0:latest' does not match pattern"),
        (
            {"image": {"digest": "sha256:abc"}},
            "at '/image/digest': 'sha256:abc' does not match pattern",
        ),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
        (
            {"certManager": {"duration": "90d"}},
            "at '/certManager/duration': '90d' does not match pattern",
        ),
        ({"builder": {"memory": "4GB"}}, "at '/builder/memory': '4GB' does not match pattern"),
        (
            {"builder": {"platforms": ["amd64"]}},
            "at '/builder/platforms/0': 'amd64' does not match pattern",
        ),
        ({"webhook": {"excludeNamespaces": ["Bad_NS"]}}, "at '/webhook/excludeNamespaces/0'"),
        (
            {"controller": {"pullSecretNamespaces": ["a", "a"]}},
            "at '/controller/pullSecretNamespaces'",
        ),
        (
            {"logLevel": "verbose"},
            "at '/logLevel': value must be one of 'debug', 'info', 'warning', 'error'",
        ),
        (
            {"webhook": {"tolerations": [{"operator": "Exist"}]}},
            "at '/webhook/tolerations/0/operator'",
        ),
        (
            {"webhook": {"resources": {"requests": {"gpu": 1}}}},
            "additional properties 'gpu' not allowed",
        ),
    ],
)
def test_schema_refuses_bad_values_naming_the_key(values: Obj, message: str) -> None:
    error = render_error(values)
    assert "values don't meet the specifications of the schema" in error
    assert message in error


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"controller": {"replicaCount": 2, "leaderElection": {"enabled": False}}},
            "controller.replicaCount is 2 but controller.leaderElection.enabled is false",
        ),
        (
            {"webhook": {"replicaCount": 1}},
            "webhook.podDisruptionBudget.minAvailable (1) must be less than "
            "webhook.replicaCount (1)",
        ),
        (
            {"controller": {"leaderElection": {"leaseDurationSeconds": 5}}},
            "leaseDurationSeconds must be greater than renewDeadlineSeconds",
        ),
        (
            {"mirror": {"enabled": True, "skipVerifyRegistries": ["quay.io"]}},
            'add "quay.io" to mirror.registries',
        ),
    ],
)
def test_contradictory_values_fail_with_the_fix(values: Obj, message: str) -> None:
    assert message in render_error(values)


def test_single_webhook_replica_works_without_a_pdb() -> None:
    docs = render({"webhook": {"replicaCount": 1, "podDisruptionBudget": {"enabled": False}}})
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


def _schema_leaves(schema: Obj, defs: Obj, prefix: str = "") -> list[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    props = schema.get("properties")
    if schema.get("type") != "object" or not props or prefix.endswith(("resources", "affinity")):
        return [prefix]
    return [
        leaf
        for key, sub in props.items()
        for leaf in _schema_leaves(sub, defs, f"{prefix}.{key}".lstrip("."))
    ]


def _values_key_lines(text: str) -> dict[str, int]:
    """Dotted key path -> line index, for mapping keys (not list items) in values.yaml."""
    found: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    for index, line in enumerate(text.splitlines()):
        match = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        found.setdefault(".".join(k for _, k in stack), index)
    return found


def test_values_yaml_schema_and_docs_agree() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    leaves = _schema_leaves(schema, schema["definitions"])
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    positions = _values_key_lines(text)
    values = yaml.safe_load(text)
    rows = dict(
        re.findall(
            r"^\| `([^`]+)` \| `([^`]*)` \|", (REPO_ROOT / "docs" / "chart.md").read_text(), re.M
        )
    )
    undocumented = []
    for leaf in leaves:
        assert leaf in positions, f"{leaf} is in values.schema.json but not in values.yaml"
        above = []
        index = positions[leaf] - 1
        while index >= 0 and lines[index].strip().startswith("#"):
            above.append(lines[index])
            index -= 1
        if not any("# --" in line for line in above):
            undocumented.append(f"values.yaml: {leaf} has no '# --' comment")
        default: Any = values
        for key in leaf.split("."):
            default = default[key]
        if leaf not in rows:
            undocumented.append(f"docs/chart.md: no row for `{leaf}`")
        elif yaml.safe_load(rows[leaf]) != default:
            undocumented.append(f"docs/chart.md: `{leaf}` default {rows[leaf]} != {default!r}")
    assert undocumented == []
    assert len(leaves) == len(rows) > 60


def _every_object_level(schema: Obj, path: str = "") -> list[str]:
    missing = []
    closed = schema.get("additionalProperties") is False
    if schema.get("type") == "object" and "properties" in schema and not closed:
        missing.append(path or "/")
    for key, sub in (schema.get("properties") or {}).items():
        missing += _every_object_level(sub, f"{path}/{key}")
    for key, sub in (schema.get("definitions") or {}).items():
        missing += _every_object_level(sub, f"#/definitions/{key}")
    items = schema.get("items")
    if isinstance(items, dict):
        missing += _every_object_level(items, f"{path}[]")
    return missing


def test_schema_refuses_unknown_keys_at_every_object_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _every_object_level(schema) == []


def test_notes_say_how_to_check_and_what_containerd_needs() -> None:
    # `helm template` does not render NOTES.txt: its text is checked for what it must say.
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    config_path = 'config_path = "{{ .Values.mirror.containerdConfigPath }}"'
    for text in ("get pods", "mutatingwebhookconfiguration", "helm test", "imagecache explain",
                 "--dry-run=server", config_path):  # fmt: skip
        assert text in notes


def test_helm_test_pod_checks_the_decision_in_a_served_namespace() -> None:
    docs = render({"test": {"namespace": "apps"}})
    pod = find(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = container(pod, "decision")
    assert c["command"][:2] == ["python", "-c"]
    compile(c["command"][2], "helm-test", "exec")  # valid Python
    assert {"name": "TEST_NAMESPACE", "value": "apps"} in c["env"]
    role = find(docs, "Role", f"{FULL}-test")
    assert role["metadata"]["namespace"] == "apps"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    binding = find(docs, "RoleBinding", f"{FULL}-test")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULL}-test", "namespace": NS}
    ]


def test_ca_bundle_is_not_rendered_by_helm_template() -> None:
    # `lookup` returns nothing offline; the apiserver test covers the carry-over on upgrade.
    for hook in webhook_configuration(rendered("default"))["webhooks"]:
        assert "caBundle" not in hook["clientConfig"]


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.20.0-0"
    assert (CHART / "crds" / "imagecache.dev_imagecaches.yaml").exists()
    assert Path(CHART / "templates" / "tests" / "test-decision.yaml").exists()
    error = render_error({}, kube_version="1.19.9")
    assert "1.19.9" in error and ">=1.20.0-0" in error


def test_log_level_and_format_are_one_value_each_for_every_part() -> None:
    """Issue 13.2: logLevel and logFormat reach the webhook, the controller, the node mirror
    and snapshotter, and through the controller's settings the builder Jobs it creates."""
    from webhook.builder.command import parser as builder_parser
    from webhook.controller.command import settings_from
    from webhook.controller.core.manifests_build import BuildInputs, builder_job, sizer_job
    from webhook.controller.core.reconcile_model import Cache

    values = {"mirror": {"enabled": True}, "snapshotter": {"enabled": True},
              "logLevel": "warning", "logFormat": "text"}  # fmt: skip
    parsers, seen = _parsers(), []
    controller_args = None
    for doc in render(values):
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for c in pod_spec(doc)["containers"]:
            command, *rest = c["args"]
            parsed, _ = parsers[command](rest)
            assert (parsed.log_level, parsed.log_format) == ("warning", "text"), c["name"]
            seen.append(command)
            if command == "controller":
                controller_args = parsed
    assert sorted(seen) == ["controller", "mirror", "serve", "snapshotter"]
    assert controller_args is not None
    settings = settings_from(controller_args)
    cache_ = Cache(name="web", uid="u", generation=1, deleting=False, finalizers=(),
                   annotations={}, spec={}, status={})  # fmt: skip
    inputs = BuildInputs(bid="b", images=("nginx",), platforms=("linux/amd64",),
                         insecure_registries=(), pull_secrets=(), storage_class=None,
                         snapshot_class=None, size_gib=None, serve_credentialed=False)  # fmt: skip
    for make in (builder_job, sizer_job):
        args = pod_spec(make(cache_, settings, inputs))["containers"][0]["args"]
        assert args[0] == "build"
        parsed = builder_parser().parse_args(args[1:])
        assert (parsed.log_level, parsed.log_format) == ("warning", "text"), make.__name__
    assert "logFormat" in render_error({"logFormat": "yaml"})
