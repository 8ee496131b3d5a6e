"""`imagecache explain` as scripts use it (issue 13.4): the real console script on the README's
examples, its exit status per decision, where its caches came from, and one clear message when
no cluster configuration is found."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from cli_run import run_cli
from envtest import ControlPlane

from webhook.server.core import explain as ex

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# example -> (the Decision line's outcome, denied, exit status)
EXPECTED = {
    "pod-hit.yaml": ("hit", False, ex.EXIT_HIT),
    "pod-mismatch.yaml": ("mismatch", False, ex.EXIT_MISMATCH),
    "pod-miss.yaml": ("miss", False, ex.EXIT_MISS),
    "pod-required.yaml": ("miss", True, ex.EXIT_DENIED),
    "pod-unavailable.yaml": ("unavailable", False, ex.EXIT_UNAVAILABLE),
    "deployment.yaml": ("hit", False, ex.EXIT_HIT),
}


def _decision(stdout: str) -> str:
    line = next(x for x in stdout.splitlines() if x.startswith("Decision: "))
    return line.removeprefix("Decision: ").split(":", 1)[0]


def test_every_example_is_checked_and_used_by_the_readme() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)
    readme = (REPO / "README.md").read_text()
    for name in EXPECTED:
        assert f"examples/{name}" in readme, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_explain_on_each_example(name: str) -> None:
    outcome, denied, code = EXPECTED[name]
    done = run_cli("explain", str(EXAMPLES / name))
    assert done.returncode == code, (done.stdout, done.stderr)
    assert _decision(done.stdout) == outcome
    assert ("The pod would be DENIED" in done.stdout) is denied
    assert done.stdout.splitlines()[0].endswith(
        "ImageCache(s) from the embedded examples (webhook/data/default-caches.yaml; "
        "--caches FILE or --cluster for yours)")
    assert done.stderr == ""
    # Said in the example's own comment, for people reading it.
    assert f"exit status {code}" in (EXAMPLES / name).read_text()


def test_exit_codes_are_distinct_and_never_0_for_a_denial() -> None:
    codes = [ex.EXIT_HIT, ex.EXIT_MISMATCH, ex.EXIT_MISS, ex.EXIT_UNAVAILABLE, ex.EXIT_DENIED,
             ex.EXIT_NO_DECISION, 1, 2]  # fmt: skip
    assert len(set(codes)) == len(codes)
    # A denial wins over whatever outcome it comes with, hit included.
    for outcome in (*ex.EXIT_CODES, None):
        assert ex.Explanation("", outcome, True).exit_code == ex.EXIT_DENIED
    assert ex.Explanation("", None, False).exit_code == ex.EXIT_NO_DECISION
    help_text = run_cli("explain", "--help").stdout
    for code in codes:
        assert re.search(rf"^  {code}  \w", help_text, re.M), code


def test_the_caches_file_is_named_and_a_pod_not_opted_in_has_its_own_code(
    tmp_path: Path,
) -> None:
    caches = tmp_path / "caches.yaml"
    caches.write_text("")  # no caches at all
    done = run_cli("explain", "--caches", str(caches), str(EXAMPLES / "pod-hit.yaml"))
    assert done.returncode == ex.EXIT_MISS
    assert f"0 ImageCache(s) from the file {caches}" in done.stdout.splitlines()[0]
    plain = yaml.safe_load((EXAMPLES / "pod-hit.yaml").read_text())
    del plain["metadata"]["annotations"]
    done = run_cli("explain", "-", stdin=yaml.safe_dump(plain))
    assert done.returncode == ex.EXIT_NO_DECISION, done.stderr
    assert _decision(done.stdout) == "none"


def _no_kube_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}  # fmt: skip
    env["HOME"] = str(home)
    return env


@pytest.mark.parametrize("extra", [[], ["--kubeconfig", "missing.conf"]], ids=["none", "missing"])
def test_no_kubeconfig_is_one_clear_message(tmp_path: Path, extra: list[str]) -> None:
    done = run_cli("explain", "--cluster", *extra, str(EXAMPLES / "pod-hit.yaml"),
                   env=_no_kube_env(tmp_path), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagecache explain: "), done.stderr
    if extra:
        assert "--kubeconfig missing.conf: no such file" in lines[0]
    else:
        assert "no kubeconfig found" in lines[0] and "--kubeconfig FILE" in lines[0]
        assert str(tmp_path / ".kube" / "config") in lines[0]


def test_a_kubeconfig_variable_naming_no_file_is_said(tmp_path: Path) -> None:
    env = {**_no_kube_env(tmp_path), "KUBECONFIG": str(tmp_path / "gone.conf")}
    done = run_cli("explain", "--cluster", str(EXAMPLES / "pod-hit.yaml"), env=env)
    assert done.returncode == 1
    assert done.stderr == (f"imagecache explain: no kubeconfig found (KUBECONFIG="
                           f"{tmp_path / 'gone.conf'}, not in a pod): pass --kubeconfig FILE, "
                           "or explain against caches from a file: --caches FILE\n")


def test_an_unreachable_cluster_is_one_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))  # fmt: skip
    done = run_cli("explain", "--cluster", "--kubeconfig", str(config),
                   str(EXAMPLES / "pod-hit.yaml"))  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("imagecache explain: cannot reach the cluster at "
                                  "https://127.0.0.1:1: "), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_explain_reads_the_cluster(apiserver: ControlPlane, tmp_path: Path) -> None:
    """Against the real kube-apiserver: the caches listed there and the namespace's label."""
    namespace = "explain-cluster"
    apiserver.apply({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": namespace,
                                  "labels": {"imagecache.dev/use-image-cache": "auto"}}})
    apiserver.apply({"apiVersion": "imagecache.dev/v1alpha1", "kind": "ImageCache",
                     "metadata": {"name": "explain-web"},
                     "spec": {"images": ["nginx:1.25"]}})  # fmt: skip
    status = {"status": {"phase": "Ready", "restoreSize": "5Gi", "namespaces": [
        {"namespace": namespace, "snapshotName": "imagecache-explain-web", "readyToUse": True}]}}
    apiserver.kubectl("patch", "imc", "explain-web", "--subresource=status", "--type=merge",
                      "-p", json.dumps(status))  # fmt: skip
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace},
           "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}  # no annotation
    done = run_cli("explain", "--cluster", "--kubeconfig", str(apiserver.kubeconfig), "-",
                   stdin=yaml.safe_dump(pod))  # fmt: skip
    assert done.returncode == ex.EXIT_HIT, (done.stdout, done.stderr)
    first = done.stdout.splitlines()[0]
    assert re.search(r"ImageCache\(s\) from the cluster at https://127\.0\.0\.1:\d+$", first)
    # A hit although the pod has no annotation: the namespace's label was read too.
    assert "Chosen cache: explain-web " in done.stdout
