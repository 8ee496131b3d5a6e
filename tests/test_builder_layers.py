"""The builder unpacks every layer under /layers/<chainID hex>/ (issue 11.1), pulling from a
real registry (Debian docker-registry): whiteouts and opaque directories as overlayfs reads
them (proved by a real overlay mount), owners, modes, hard links and xattrs kept, shared
layers once, chain IDs in imagecache.json, hostile and lying layers refused without a byte
written outside the layer, and a run killed half-way redone cleanly."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from layerkit import BASE, OTHER, TOP, Entry, escape_layer, gz_layer, image_of
from registry_fixture import (
    Image,
    Registry,
    builder_args,
    main_command,
    needs,
    repo_env,
    run_builder,
    sha256,
)

from webhook.core.build_result import BuildResult
from webhook.core.cachedisk import MANIFEST_FILE, parse_manifest
from webhook.core.layer_chain import chain_ids

pytestmark = [pytest.mark.registry, needs("docker-registry")]


@dataclass
class Content:
    registry: Registry
    app: Image  # BASE + TOP
    other: Image  # BASE + OTHER: shares the base layer
    hostile: Image  # BASE + a layer that writes through a symlink to `outside`
    liar: Image  # BASE + OTHER, but its config names a wrong diff ID for OTHER
    outside: Path

    def ref(self, name: str) -> str:
        return f"{self.registry.host}/{name}"


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Content]:
    outside = tmp_path_factory.mktemp("outside")
    with Registry(tmp_path_factory.mktemp("registry")) as registry:
        app = image_of([BASE, TOP])
        other = image_of([BASE, OTHER])
        hostile = image_of([BASE, escape_layer(str(outside))])
        liar = image_of([BASE, OTHER], diff_ids=[sha256(gzip.decompress(BASE.data)),
                                                 sha256(b"not the layer")])
        pusher = registry.client()
        for repo, img in (("app", app), ("other", other), ("hostile", hostile), ("liar", liar)):
            pusher.push_image(repo, "1", img)
        yield Content(registry, app, other, hostile, liar, outside)


def build(content: Content, out: Path, *names: str, extra: tuple[str, ...] = ()
          ) -> tuple[int, object]:
    return run_builder(out, out.parent / f"{out.name}.term", [content.ref(n) for n in names],
                       "--insecure-registry", content.registry.host, "--layers", *extra)


def chains(img: Image) -> tuple[str, ...]:
    return chain_ids(json.loads(img.config.data)["rootfs"]["diff_ids"])


def layer_dir(out: Path, chain_id: str) -> Path:
    return out / "layers" / chain_id.removeprefix("sha256:")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root "
                                "(owners, whiteout devices, trusted.* xattrs)")


@needs_root
def test_layers_unpacked_for_overlayfs(content: Content, tmp_path: Path) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    code, result = build(content, out, "app:1", "other:1")
    assert code == 0, result
    base, top = chains(content.app)
    _, other = chains(content.other)
    assert {p.name for p in (out / "layers").iterdir()} == {
        c.removeprefix("sha256:") for c in (base, top, other)}  # the shared base once

    lower = layer_dir(out, base)
    assert (lower / "etc/motd").read_bytes() == b"hello\n"
    tool = (lower / "usr/bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and (tool.st_uid, tool.st_gid) == (0, 0)
    assert (lower / "usr/bin/tool2").stat().st_ino == tool.st_ino  # a hard link
    assert os.readlink(lower / "usr/bin/sh") == "/bin/busybox"
    home = (lower / "home/user").stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o700)
    notes = lower / "home/user/notes"
    assert os.getxattr(notes, "user.origin") == b"imagecache-test"
    with pytest.raises(OSError):  # trusted.* never comes from a tar
        os.getxattr(notes, "trusted.overlay.redirect")
    assert int((lower / "etc/keep").stat().st_mtime) == 1_700_000_000

    upper = layer_dir(out, top)
    whiteout = (upper / "etc/motd").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "var/cache", "trusted.overlay.opaque") == b"y"
    assert not (upper / "var/cache/.wh..wh..opq").exists()

    manifest = parse_manifest((out / MANIFEST_FILE).read_text())
    by_ref = {i.image: i for i in manifest.images}
    app = by_ref[content.ref("app:1")]
    assert [(la.digest, la.chain_id, la.unpacked, la.platform) for la in app.layers] == [
        (content.app.layers[0].digest, base, True, "linux/amd64"),
        (content.app.layers[1].digest, top, True, "linux/amd64")]
    assert [la.diff_id for la in app.layers] == [
        sha256(gzip.decompress(b.data)) for b in content.app.layers]
    assert isinstance(result, BuildResult)

    # What containerd's overlay snapshotter would mount: the top layer over the base.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"ro,lowerdir={upper}:{lower}", str(mnt)], check=True)
    try:
        assert not (mnt / "etc/motd").exists()  # whited out
        assert (mnt / "etc/keep").read_bytes() == b"kept\n"
        assert sorted(p.name for p in (mnt / "var/cache").iterdir()) == ["new"]  # opaque
        assert (mnt / "usr/bin/tool").read_bytes().startswith(b"#!/bin/sh")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@needs_root
def test_hostile_and_lying_layers_are_refused(content: Content, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    code, result = build(content, out, "hostile:1", "liar:1")
    assert code == 0, result  # the OCI layout still serves the mirror
    assert list(content.outside.iterdir()) == []  # nothing written through the symlink
    base, evil = chains(content.hostile)
    _, lie = chains(content.liar)
    assert {p.name for p in (out / "layers").iterdir()} == {base.removeprefix("sha256:")}
    text = caplog.text
    assert "lies under 'evil', which is a symlink" in text
    assert "the image config's diff_ids say" in text
    manifest = parse_manifest((out / MANIFEST_FILE).read_text())
    flags = {la.chain_id: la.unpacked for i in manifest.images for la in i.layers}
    assert flags == {base: True, evil: False, lie: False}


@needs_root
def test_rerun_prunes_and_reuses(content: Content, tmp_path: Path) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    assert build(content, out, "app:1")[0] == 0
    base, _ = chains(content.app)
    marker = layer_dir(out, base) / "etc/keep"
    before = marker.stat().st_ino
    assert build(content, out, "other:1")[0] == 0  # top is no longer wanted
    _, other = chains(content.other)
    assert {p.name for p in (out / "layers").iterdir()} == {
        base.removeprefix("sha256:"), other.removeprefix("sha256:")}
    assert marker.stat().st_ino == before  # the shared base was not unpacked again


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may write (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="snap-unpriv-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_without_privilege_the_build_says_what_it_needs(content: Content,
                                                        open_dir: Path) -> None:
    if os.geteuid() == 0 and not _can_drop_to_nobody():
        pytest.skip("needs setpriv to run the builder unprivileged")
    out = open_dir / "disk"
    out.mkdir()
    out.chmod(0o777)
    term = open_dir / "term"
    args = builder_args(out, term, [content.ref("app:1")], "--insecure-registry",
                        content.registry.host)
    command = main_command("webhook.builder.command", [*args, "--layers"])
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all", *command]
    proc = subprocess.run(command, env=repo_env(), capture_output=True, timeout=120)
    assert proc.returncode == 2, proc.stderr.decode()
    message = term.read_text()
    assert "CAP_MKNOD" in message and "without --layers" in message
    assert not (out / MANIFEST_FILE).exists()
    # without --layers the same unprivileged builder writes the layout only
    proc = subprocess.run(command[:-1], env=repo_env(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert not (out / "layers").exists()
    assert parse_manifest((out / MANIFEST_FILE).read_text()).images[0].layers == ()


def _can_drop_to_nobody() -> bool:
    return subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0


@needs_root
def test_killed_while_unpacking_then_rerun(content: Content, tmp_path: Path) -> None:
    big = gz_layer([Entry("big/zeros", bytes(768 << 20))])  # unpacks slowly, stores small
    img = image_of([big])
    content.registry.client().push_image("big", "1", img)
    out = tmp_path / "disk"
    out.mkdir()
    term = tmp_path / "term"
    args = builder_args(out, term, [content.ref("big:1")], "--insecure-registry",
                        content.registry.host, "--layers")
    proc = subprocess.Popen(main_command("webhook.builder.command", args), env=repo_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (chain,) = chains(img)
    partial = out / "layers/.partial" / chain.removeprefix("sha256:") / "big/zeros"
    deadline = time.monotonic() + 120
    try:
        while not (partial.exists() and partial.stat().st_size > 0):
            assert proc.poll() is None, "the builder ended before it was killed"
            assert time.monotonic() < deadline, "the unpack never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert not layer_dir(out, chain).exists()  # nothing half-made under its real name
    assert not (out / MANIFEST_FILE).exists()
    code, result = build(content, out, "big:1")
    assert code == 0, result
    assert not (out / "layers/.partial").exists()
    assert (layer_dir(out, chain) / "big/zeros").stat().st_size == 768 << 20


def test_the_writer_never_follows_a_symlink(tmp_path: Path) -> None:
    """Defence in depth under the rules: even an action the rules would refuse cannot make
    the unpacker write through a symlink (every component is opened with O_NOFOLLOW)."""
    import io
    import tarfile

    from webhook.builder.core.layer_tar import Action, Do, Kind
    from webhook.builder.unpack import _Writer

    outside = tmp_path / "outside"
    outside.mkdir()
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "evil").symlink_to(outside)
    writer = _Writer(layer)
    try:
        info = tarfile.TarInfo("evil/pwned")
        info.size = 5
        for action in (Action(Do.WRITE, ("evil", "pwned")),
                       Action(Do.WHITEOUT, ("evil", "gone"), Kind.CHAR),
                       Action(Do.OPAQUE, ("evil",), Kind.DIR)):
            with pytest.raises(OSError):
                writer.write(action, info, io.BytesIO(b"pwned"))
        (layer / "file").write_text("x")
        with pytest.raises(OSError):  # a file where a directory is expected
            writer.write(Action(Do.WRITE, ("file", "child")), info, io.BytesIO(b"pwned"))
    finally:
        writer.close()
    assert list(outside.iterdir()) == []
