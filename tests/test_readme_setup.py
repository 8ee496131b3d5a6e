"""A fresh clone followed as the README says (issue 13.6-13.8): the Debian packages it lists are
the ones hack/test.sh installs, the helm and kubectl versions it names are the ones
hack/tools.sh pins and installed, the test control plane comes by controller-runtime's envtest
convention, and no tracked file names a path of this machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helm_chart import helm_binary

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _readme_text() -> str:
    return " ".join(README.split())  # paragraphs wrap anywhere


def test_the_readme_lists_the_packages_hack_test_sh_installs() -> None:
    script = (REPO / "hack" / "test.sh").read_text()
    debs = re.search(r"^debs=\(([^)]*)\)", script, re.M)
    assert debs is not None
    installed = debs.group(1).split()
    listed = re.search(r"installs the Debian packages the tests use \(([^)]*)\)", _readme_text())
    assert listed is not None
    assert re.findall(r"`([^`]+)`", listed.group(1)) == installed


def test_the_readme_names_the_pinned_helm_and_kubectl() -> None:
    tools = (REPO / "hack" / "tools.sh").read_text()
    pins = dict(re.findall(r"^(package|version|helm_version|kubectl_version)=(\S+)$", tools, re.M))
    text = _readme_text()
    assert f"helm {pins['helm_version']}" in text
    assert f"kubectl {pins['kubectl_version']}" in text
    assert f"`{pins['package']}=={pins['version']}`" in text
    helm = helm_binary()
    if helm is not None and helm.endswith(".tools/bin/helm"):  # what tools.sh installed
        out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        assert out.startswith(pins["helm_version"] + "+"), out
        kubectl = Path(helm).with_name("kubectl")
        out = subprocess.run([str(kubectl), "version", "--client"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        assert f"Client Version: {pins['kubectl_version']}" in out


def test_the_test_control_plane_follows_envtests_convention() -> None:
    text = _readme_text()
    for said in ("KUBEBUILDER_ASSETS", "setup-envtest use 1.20.x -p path", "../shared/envtest",
                 "IMAGECACHE_SHARED", "make help"):  # fmt: skip
        assert said in text, said
    setup = (REPO / "hack" / "envtest-setup.sh").read_text()
    assert 'if [ -n "${KUBEBUILDER_ASSETS:-}" ]' in setup  # one already set is used as it is


def test_no_tracked_file_names_a_path_of_this_machine() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    this = Path(__file__).relative_to(REPO).as_posix()
    named = [f for f in files if f != this and (REPO / f).is_file()
             and "/work/" in (REPO / f).read_text(errors="replace")]  # fmt: skip
    assert named == []
