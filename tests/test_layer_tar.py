"""The pure rules for layer tars (webhook.builder.core.layer_tar) and layer identities
(webhook.core.layer_chain): table tests of hostile and ordinary archives."""

from __future__ import annotations

import hashlib
import json

import pytest

from webhook.builder.core.layer_tar import Action, Do, Kind, LayerCheck, LayerRefused, Member
from webhook.core.layer_chain import (
    InvalidConfig,
    chain_ids,
    config_diff_ids,
    estimated_unpacked,
    layer_dir_name,
)
from webhook.core.registry_manifest import Descriptor

F, D, S, H = Kind.FILE, Kind.DIR, Kind.SYMLINK, Kind.HARDLINK


def run(*members: Member, **limits: int) -> list[Action]:
    check = LayerCheck("sha256:test", **limits)
    return [check.admit(m) for m in members]


ORDINARY = [
    ("root entry skipped", [Member("./", D)], [Action(Do.SKIP, ())]),
    ("leading ./ dropped", [Member("./etc/passwd", F, 10)], [Action(Do.WRITE, ("etc", "passwd"))]),
    ("absolute symlink target is fine (resolved in the container)",
     [Member("bin/sh", S, linkname="/usr/bin/dash")], [Action(Do.WRITE, ("bin", "sh"), S)]),
    ("relative symlink up the tree is fine", [Member("a/b", S, linkname="../../../etc")],
     [Action(Do.WRITE, ("a", "b"), S)]),
    ("whiteout -> char device at the hidden name", [Member("etc/.wh.motd", F)],
     [Action(Do.WHITEOUT, ("etc", "motd"), Kind.CHAR)]),
    ("opaque marker -> opaque parent", [Member("var/cache/.wh..wh..opq", F)],
     [Action(Do.OPAQUE, ("var", "cache"), D)]),
    ("opaque at the layer root", [Member(".wh..wh..opq", F)], [Action(Do.OPAQUE, (), D)]),
    ("aufs metadata skipped", [Member(".wh..wh.plnk/123", F)],
     [Action(Do.SKIP, (".wh..wh.plnk", "123"))]),
    ("hard link to an earlier file", [Member("a", F, 3), Member("b", H, linkname="./a")],
     [Action(Do.WRITE, ("a",)), Action(Do.WRITE, ("b",), H, ("a",))]),
    ("a directory listed twice", [Member("d", D), Member("d/", D)],
     [Action(Do.WRITE, ("d",), D), Action(Do.WRITE, ("d",), D)]),
    ("directory after its children", [Member("d/f", F), Member("d", D)],
     [Action(Do.WRITE, ("d", "f")), Action(Do.WRITE, ("d",), D)]),
    ("fifo", [Member("run/p", Kind.FIFO)], [Action(Do.WRITE, ("run", "p"), Kind.FIFO)]),
]


@pytest.mark.parametrize(("case", "members", "expected"), ORDINARY, ids=[c[0] for c in ORDINARY])
def test_ordinary_members(case: str, members: list[Member], expected: list[Action]) -> None:
    assert run(*members) == expected


HOSTILE = [
    ("absolute path", [Member("/etc/passwd", F)], "is absolute"),
    ("dot-dot", [Member("a/../../etc/passwd", F)], "contains '..'"),
    ("dot-dot alone", [Member("..", D)], "contains '..'"),
    ("NUL in name", [Member("a\0b", F)], "NUL"),
    ("path too long", [Member("a/" * 3000, F)], "longer than 4096"),
    ("component too long", [Member("x" * 300, F)], "longer than 255"),
    ("write through a symlink", [Member("a", S, linkname="/etc"), Member("a/passwd", F)],
     "lies under 'a', which is a symlink"),
    ("write through a relative escaping symlink",
     [Member("a", S, linkname="../../.."), Member("a/b/c", F)], "which is a symlink"),
    ("write under a regular file", [Member("a", F), Member("a/b", F)], "which is a file"),
    ("hard link out of the layer", [Member("a", H, linkname="../../etc/shadow")],
     "contains '..'"),
    ("hard link absolute", [Member("a", H, linkname="/etc/shadow")], "is absolute"),
    ("hard link to a symlink", [Member("s", S, linkname="/etc/shadow"),
                                Member("a", H, linkname="s")], "not a regular file"),
    ("hard link to nothing earlier", [Member("a", H, linkname="b")], "not a regular file"),
    ("hard link through a symlink", [Member("s", S, linkname="/etc"),
                                     Member("a", H, linkname="s/shadow")], "not a regular file"),
    ("char device", [Member("dev/null", Kind.CHAR)], "no device files"),
    ("block device", [Member("dev/sda", Kind.BLOCK)], "no device files"),
    ("unknown type", [Member("x", Kind.OTHER)], "no device files"),
    ("duplicate file", [Member("a", F), Member("a", F)], "names 'a' again"),
    ("file replacing a directory", [Member("d", D), Member("d", F)], "names 'd' again"),
    ("symlink replacing a directory with children", [Member("d/f", F), Member("d", S,
                                                                         linkname="/")],
     "names 'd' again"),
    ("whiteout and file of one name", [Member(".wh.a", F), Member("a", F)], "names 'a' again"),
    ("whiteout of nothing", [Member("dir/.wh.", F)], "whiteout of nothing"),
    ("empty symlink target", [Member("s", S, linkname="")], "empty or NUL"),
]


@pytest.mark.parametrize(("case", "members", "message"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_members_refused(case: str, members: list[Member], message: str) -> None:
    with pytest.raises(LayerRefused, match="layer sha256:test") as info:
        run(*members)
    assert message in str(info.value)


def test_member_count_limit() -> None:
    members = [Member(f"f{n}", F) for n in range(4)]
    assert len(run(*members[:3], max_members=3)) == 3
    with pytest.raises(LayerRefused, match="more than 3 members"):
        run(*members, max_members=3)


def test_size_limit() -> None:
    with pytest.raises(LayerRefused, match="more than 100 bytes"):
        run(Member("a", F, 60), Member("b", F, 60), max_bytes=100)


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = (f"sha256:{n * 64}" for n in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == (a, ab, abc)
    assert chain_ids([]) == ()
    assert layer_dir_name(abc) == abc.removeprefix("sha256:")


def test_config_diff_ids() -> None:
    good = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]}})
    assert config_diff_ids(good.encode(), "img") == ("sha256:" + "a" * 64,)
    for body, message in ((b"{", "not JSON"), (b"{}", "no rootfs.diff_ids"),
                          (b'{"rootfs": {"diff_ids": ["md5:x"]}}', "algorithm")):
        with pytest.raises(InvalidConfig, match=message):
            config_diff_ids(body, "img")


def test_unpacked_estimate() -> None:
    gz = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "a" * 64, 100)
    tar = Descriptor("application/vnd.oci.image.layer.v1.tar", "sha256:" + "a" * 64, 100)
    docker = Descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "sha256:" + "a" * 64, 100)
    assert estimated_unpacked(gz) == 300
    assert estimated_unpacked(docker) == 300
    assert estimated_unpacked(tar) == 100


def test_builder_job_unpacks_layers_with_exact_capabilities() -> None:
    """builder_layers (chart: snapshotter.enabled): the build Job runs as root with the
    unpacking capabilities, never privileged; the sizing Job stays unprivileged."""
    from webhook.controller.core import manifests_build as mb
    from webhook.controller.core.reconcile_model import Cache, Settings

    cache = Cache("web", "uid", 1, False, (), {}, {"images": ["nginx"]}, {})
    inputs = mb.BuildInputs("b1", ("nginx",), ("linux/amd64",), (), (), None, None, 5, False)
    off = Settings(namespace="imc", builder_image="img:1")
    on = Settings(namespace="imc", builder_image="img:1", builder_layers=True)
    assert "--layers" not in mb.builder_job(cache, off, inputs)["spec"]["template"]["spec"][
        "containers"][0]["args"]
    spec = mb.builder_job(cache, on, inputs)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert "--layers" in container["args"]
    assert spec["securityContext"]["runAsUser"] == 0
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID",
                                                  "MKNOD", "SETFCAP", "SYS_ADMIN"]},
    }
    assert "privileged" not in container["securityContext"]
    sizer = mb.sizer_job(cache, on, inputs)["spec"]["template"]["spec"]
    assert sizer["securityContext"]["runAsNonRoot"] is True
    assert sizer["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "--layers" in sizer["containers"][0]["args"]  # its total counts the layers
