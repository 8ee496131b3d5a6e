"""hosts.toml for containerd: merging (webhook.mirror.core.mirror_hosts) and writing
(`imagecache mirror configure`). containerd reading what is written is checked in
test_mirror_containerd.py."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook.mirror.command import main
from webhook.mirror.core.mirror_hosts import (
    HostsConfigError,
    merge_hosts,
    mirror_url,
    parse_hostport,
    registry_dir,
    render_toml,
    upstream_server,
)

MIRROR = "http://127.0.0.1:5005"

MERGES = [
    # (name, existing file, registry, flags) -> expected file
    ("new docker.io", None, "docker.io", {}, '''\
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
'''),
    ("new, serve tags", None, "docker.io", {"resolve": True}, '''\
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5005"]
  capabilities = ["pull", "resolve"]
'''),
    ("serve tags no more", '''\
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5005"]
  capabilities = ["pull", "resolve"]
''', "docker.io", {}, '''\
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
'''),
    ("new, plain http", None, "127.0.0.1:5000", {"plain_http": True}, '''\
server = "http://127.0.0.1:5000"

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
'''),
    ("new, skip verify", None, "ghcr.io", {"skip_verify": True}, '''\
server = "https://ghcr.io"
skip_verify = true

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
'''),
    ("other hosts kept after the mirror", '''\
server = "https://registry-1.docker.io"
ca = "/etc/ca.pem"

[host."https://proxy.corp:5000"]
  capabilities = ["pull"]
  skip_verify = true
  [host."https://proxy.corp:5000".header]
    x-custom = ["1"]

[host."https://other.corp"]
  capabilities = ["pull"]
''', "docker.io", {}, '''\
server = "https://registry-1.docker.io"
ca = "/etc/ca.pem"

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]

[host."https://proxy.corp:5000"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://proxy.corp:5000".header]
  x-custom = ["1"]

[host."https://other.corp"]
  capabilities = ["pull"]
'''),
    ("the mirror moves first and keeps its own keys", '''\
[host."https://a.corp"]
  capabilities = ["pull"]

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
  override_path = false
''', "quay.io", {}, '''\
server = "https://quay.io"

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
  override_path = false

[host."https://a.corp"]
  capabilities = ["pull"]
'''),
    ("an existing server is kept", 'server = "https://mirror.corp/v2/docker"\n', "docker.io", {},
     '''\
server = "https://mirror.corp/v2/docker"

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
'''),
    ("plain http overrides an existing server", 'server = "https://r:5000"\nskip_verify = true\n',
     "r.local:5000", {"plain_http": True}, '''\
server = "http://r.local:5000"
skip_verify = true

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
'''),
    ("odd keys and values survive", '''\
"weird key" = "it's \\"quoted\\" \\\\"
n = 3
f = 1.5
when = 1979-05-27T07:32:00Z
client = [["/a.crt", "/a.key"]]
''', "docker.io", {}, '''\
server = "https://registry-1.docker.io"
"weird key" = "it's \\"quoted\\" \\\\"
n = 3
f = 1.5
when = 1979-05-27T07:32:00+00:00
client = [["/a.crt", "/a.key"]]

[host."http://127.0.0.1:5005"]
  capabilities = ["pull"]
'''),
]


@pytest.mark.parametrize(("name", "existing", "registry", "flags", "expected"), MERGES,
                         ids=[m[0] for m in MERGES])
def test_merge_hosts(name: str, existing: str | None, registry: str, flags: dict[str, bool],
                     expected: str) -> None:
    got = merge_hosts(existing, registry, MIRROR, **flags)
    assert got == expected
    # Idempotent, and what containerd will read is what was meant.
    assert merge_hosts(got, registry, MIRROR, **flags) == got
    parsed = tomllib.loads(got)
    assert next(iter(parsed["host"])) == MIRROR
    if existing is not None:
        before = tomllib.loads(existing)
        for url, host in before.get("host", {}).items():
            if url != MIRROR:
                assert parsed["host"][url] == host


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        ("server = ", "is not TOML"),
        ("host = 3\n", "'host' must be a table"),
    ],
)
def test_an_unusable_existing_file_is_named_with_the_fix(existing: str, message: str) -> None:
    with pytest.raises(HostsConfigError, match=message) as caught:
        merge_hosts(existing, "docker.io", MIRROR)
    assert "fix or remove it" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://127.0.0.1:5005", "http://127.0.0.1:5005"),
        ("http://127.0.0.1:5005/", "http://127.0.0.1:5005"),
        (" https://[::1]:5005 ", "https://[::1]:5005"),
        ("127.0.0.1:5005", None),
        ("ftp://x:1", None),
        ("http://x:1/v2", None),
        ("http://x:1?a=b", None),
        ("http://", None),
    ],
)
def test_mirror_url(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(HostsConfigError, match="--mirror"):
            mirror_url(text)
    else:
        assert mirror_url(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5005", ("127.0.0.1", 5005)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:65535", ("localhost", 65535)),
        ("5005", None),
        (":5005", None),
        ("host:", None),
        ("host:http", None),
        ("host:70000", None),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        with pytest.raises(HostsConfigError, match="--listen"):
            parse_hostport(text, "--listen")
    else:
        assert parse_hostport(text, "--listen") == expected


@pytest.mark.parametrize(
    ("registry", "directory", "server"),
    [
        ("docker.io", "docker.io", "https://registry-1.docker.io"),
        ("index.docker.io", "docker.io", "https://registry-1.docker.io"),
        ("GHCR.io", "ghcr.io", "https://ghcr.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000", "https://127.0.0.1:5000"),
    ],
)
def test_registry_dir_and_upstream(registry: str, directory: str, server: str) -> None:
    assert registry_dir(registry) == directory
    assert upstream_server(directory) == server


@pytest.mark.parametrize("registry", ["library", "a.io/b", "", "bad host"])
def test_registry_dir_refuses_what_is_not_a_host(registry: str) -> None:
    with pytest.raises(HostsConfigError, match="--registry"):
        registry_dir(registry)


_scalars = st.one_of(
    st.text(max_size=12), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=True),
)
_values = st.one_of(_scalars, st.lists(st.text(max_size=8), max_size=3))
_keys = st.text(min_size=1, max_size=10)
_tables = st.recursive(
    st.dictionaries(_keys, _values, max_size=4),
    lambda inner: st.dictionaries(_keys, st.one_of(_values, inner), max_size=3),
    max_leaves=12,
)


@given(_tables)
def test_render_toml_reads_back_as_written(doc: dict[str, Any]) -> None:
    assert tomllib.loads(render_toml(doc)) == doc


# ---------------------------------------------------------------- the configure command


def test_configure_writes_each_registry_atomically_and_idempotently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs.d"
    (certs / "ghcr.io").mkdir(parents=True)
    (certs / "ghcr.io" / "hosts.toml").write_text(
        '[host."https://ghcr-cache.corp"]\n  capabilities = ["pull"]\n')
    argv = ["configure", "--config-path", str(certs), "--registry", "docker.io",
            "--registry", "ghcr.io", "--registry", "index.docker.io",
            "--mirror", MIRROR]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{certs}/docker.io/hosts.toml: written", f"{certs}/ghcr.io/hosts.toml: written"]
    hub = certs / "docker.io" / "hosts.toml"
    assert tomllib.loads(hub.read_text())["host"] == {MIRROR: {"capabilities": ["pull"]}}
    assert list(tomllib.loads((certs / "ghcr.io" / "hosts.toml").read_text())["host"]) == [
        MIRROR, "https://ghcr-cache.corp"]
    assert stat.S_IMODE(hub.stat().st_mode) == 0o644
    inode = hub.stat().st_ino

    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{certs}/docker.io/hosts.toml: unchanged", f"{certs}/ghcr.io/hosts.toml: unchanged"]
    assert hub.stat().st_ino == inode  # not rewritten
    assert sorted(os.listdir(certs / "docker.io")) == ["hosts.toml"]  # no temporary left

    # A change is a new file renamed into place: a reader never sees half of it.
    assert main([*argv, "--skip-verify", "docker.io"]) == 0
    assert hub.stat().st_ino != inode
    assert tomllib.loads(hub.read_text())["skip_verify"] is True
    # --serve-tags lets containerd resolve tags at the mirror.
    assert main([*argv, "--serve-tags"]) == 0
    assert tomllib.loads(hub.read_text())["host"][MIRROR] == {"capabilities": ["pull", "resolve"]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--registry", "library"], "--registry 'library' is not a registry host"),
        (["--registry", "docker.io", "--mirror", "127.0.0.1:5005"], "--mirror"),
        (["--registry", "docker.io", "--plain-http", "a/b"], "--registry 'a/b'"),
    ],
)
def test_configure_refuses_bad_flags_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["configure", "--config-path", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagecache mirror: ")
    assert message in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_configure_reports_an_unreadable_existing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docker.io").mkdir()
    (tmp_path / "docker.io" / "hosts.toml").write_text("server = [")
    assert main(["configure", "--config-path", str(tmp_path), "--registry", "docker.io"]) == 2
    assert "hosts.toml for docker.io is not TOML" in capsys.readouterr().err
    assert (tmp_path / "docker.io" / "hosts.toml").read_text() == "server = ["


def test_configure_needs_a_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["configure"]) == 2
    assert "--registry" in capsys.readouterr().err
