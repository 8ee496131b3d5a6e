"""`imagecache snapshotter configure` (issue 11.3): the CRI snapshotter key changed in the
file that holds the CRI section, every other setting and comment kept, the proxy plugin in
the main file or a drop-in, idempotent, with rollback; and containerd 1.6 itself
(`containerd config dump`) reading the result with its CRI settings intact."""

from __future__ import annotations

import copy
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from registry_fixture import missing_tools

from webhook.snapshotter.command import main

CRI = "io.containerd.grpc.v1.cri"
SOCKET = "/run/imagecache/snapshotter.sock"

NODE_CONFIG = f"""# the node's containerd config, as a distribution ships it
version = 2
imports = ["{{confd}}/*.toml"]

[plugins]
  [plugins."{CRI}"]
    sandbox_image = "registry.k8s.io/pause:3.9"  # kept
    [plugins."{CRI}".containerd]
      default_runtime_name = "runc"
      discard_unpacked_layers = false
    [plugins."{CRI}".cni]
      bin_dir = "/opt/cni/bin"
      conf_dir = "/etc/cni/net.d"
    [plugins."{CRI}".registry]
      config_path = "/etc/containerd/certs.d"
"""


def run(config: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["configure", "--containerd-config", str(config), "--socket", SOCKET, *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def load(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def without_snapshotter(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["plugins"][CRI]["containerd"].pop("snapshotter", None)
    doc["plugins"][CRI]["containerd"].pop("disable_snapshot_annotations", None)
    doc.pop("proxy_plugins", None)
    return doc


@pytest.fixture
def node_config(tmp_path: Path) -> Path:
    confd = tmp_path / "conf.d"
    confd.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(NODE_CONFIG.format(confd=confd))
    return config


def test_main_file_keeps_everything_and_is_idempotent(node_config: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    before = node_config.read_text()
    code, out = run(node_config, capsys=capsys)
    assert code == 0 and "containerd must be restarted" in out, out
    assert "overlayfs (default) -> imagecache" in out
    doc = load(node_config)
    assert doc["plugins"][CRI]["containerd"]["snapshotter"] == "imagecache"
    assert doc["proxy_plugins"]["imagecache"] == {"type": "snapshot", "address": SOCKET}
    assert without_snapshotter(doc) == tomllib.loads(before)
    text = node_config.read_text()
    assert "# kept" in text and text.startswith("# the node's containerd config")
    assert Path(f"{node_config}.before-imagecache").read_text() == before

    code, out = run(node_config, capsys=capsys)
    assert code == 0 and "need not be restarted" in out, out
    assert node_config.read_text() == text

    # rollback: the previous snapshotter back, everything else as it was
    code, out = run(node_config, "--snapshotter", "overlayfs", capsys=capsys)
    assert code == 0 and "imagecache -> overlayfs" in out
    assert load(node_config)["plugins"][CRI]["containerd"]["snapshotter"] == "overlayfs"


def test_proxy_plugin_in_a_drop_in(node_config: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    drop_in = tmp_path / "conf.d" / "imagecache.toml"
    code, out = run(node_config, "--drop-in", str(drop_in), capsys=capsys)
    assert code == 0, out
    assert load(drop_in) == {"proxy_plugins": {"imagecache": {"type": "snapshot",
                                                              "address": SOCKET}}}
    main_doc = load(node_config)
    assert "proxy_plugins" not in main_doc
    assert main_doc["plugins"][CRI]["containerd"]["snapshotter"] == "imagecache"
    assert main_doc["imports"] == [f"{tmp_path / 'conf.d'}/*.toml"]  # the glob covers it

    other = tmp_path / "elsewhere.toml"
    code, out = run(node_config, "--drop-in", str(other), capsys=capsys)
    assert code == 0, out
    assert load(node_config)["imports"][-1] == str(other)  # not covered: imported now


def test_cri_section_in_a_drop_in_is_edited_there(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    confd = tmp_path / "conf.d"
    confd.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nimports = ["{confd}/*.toml"]\n')
    cri = confd / "10-cri.toml"
    cri.write_text(f'version = 2\n[plugins."{CRI}"]\n  sandbox_image = "pause:1"\n')
    code, out = run(config, capsys=capsys)
    assert code == 0, out
    assert load(cri)["plugins"][CRI] == {"sandbox_image": "pause:1", "containerd": {
        "snapshotter": "imagecache", "disable_snapshot_annotations": False}}
    assert "plugins" not in load(config)


def test_no_cri_section_and_version_1(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("version = 2\n")
    assert run(config, capsys=capsys)[0] == 0
    assert load(config)["plugins"][CRI]["containerd"]["snapshotter"] == "imagecache"
    old = tmp_path / "v1.toml"
    old.write_text('[plugins.cri]\n  sandbox_image = "pause:1"\n')
    assert run(old, capsys=capsys)[0] == 0
    assert load(old)["plugins"]["cri"] == {"sandbox_image": "pause:1", "containerd": {
        "snapshotter": "imagecache", "disable_snapshot_annotations": False}}


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("version = 2\n[plugins\n", "is not valid TOML"),
    ("version = 3\n", "version 3 is not supported"),
])
def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
                  message: str) -> None:
    config = tmp_path / "config.toml"
    if content is not None:
        config.write_text(content)
    code, out = run(config, capsys=capsys)
    assert code == 2 and message in out, out
    assert content is None or config.read_text() == content


@pytest.mark.skipif(missing_tools("containerd") is not None, reason="needs containerd")
def test_containerd_reads_the_result(node_config: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """containerd 1.6's own merge: the snapshotter switched, the proxy plugin (from a
    drop-in) loaded, and the CRI settings of the main file all still there."""
    drop_in = tmp_path / "conf.d" / "imagecache.toml"
    assert run(node_config, "--drop-in", str(drop_in), capsys=capsys)[0] == 0
    dump = subprocess.run(["containerd", "--config", str(node_config), "config", "dump"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    merged = tomllib.loads(dump)
    cri = merged["plugins"][CRI]
    assert cri["containerd"]["snapshotter"] == "imagecache"
    assert cri["containerd"]["disable_snapshot_annotations"] is False
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.9"
    assert cri["cni"]["conf_dir"] == "/etc/cni/net.d"
    assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert merged["proxy_plugins"]["imagecache"] == {"type": "snapshot", "address": SOCKET}

    # What configure avoids (DESIGN.md's warning): a CRI table in a drop-in replaces the
    # whole CRI section, so the sandbox image and registry config fall back to defaults.
    (tmp_path / "conf.d" / "naive.toml").write_text(
        f'version = 2\n[plugins."{CRI}".containerd]\n  snapshotter = "imagecache"\n')
    dump = subprocess.run(["containerd", "--config", str(node_config), "config", "dump"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    naive = tomllib.loads(dump)["plugins"][CRI]
    assert naive["sandbox_image"] != "registry.k8s.io/pause:3.9"
    assert naive["registry"]["config_path"] == ""
