"""Where `imagecache snapshotter configure` changes containerd's configuration: pure planning
over the parsed files (DESIGN.md, "Node snapshotter", and its warning).

containerd 1.6 merges imported files plugin by plugin: a file that has a table under the CRI
plugin replaces that plugin's whole configuration. So the CRI `snapshotter` key is changed in
the one file that already holds the CRI section (the last one containerd reads, which wins),
never added to a drop-in; the main file gets it only when no file has a CRI section (CRI then
runs on defaults, which one key on top keeps). `[proxy_plugins.imagecache]` merges by name
and may live in a drop-in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLUGIN_NAME = "imagecache"
CRI_V2 = "io.containerd.grpc.v1.cri"
CRI_V1 = "cri"


class ConfigError(ValueError):
    """A containerd configuration `configure` will not edit; the message says why."""


@dataclass(frozen=True, slots=True)
class ConfigFile:
    path: str
    doc: Mapping[str, Any]  # as tomllib parsed it


@dataclass(frozen=True, slots=True)
class Plan:
    cri_file: str  # the file whose CRI section gets `snapshotter`
    cri_path: tuple[str, ...]  # table path of the key's table: plugins.<cri>.containerd
    proxy_file: str  # where [proxy_plugins.imagecache] goes
    previous: str  # CRI's snapshotter before (for rollback), "" if unset (overlayfs)


def cri_plugin(version: object) -> str:
    """containerd 1.6: `version = 2` names plugins by their full ID; without it (version 1)
    the CRI plugin is `cri`."""
    if version in (None, 1):
        return CRI_V1
    if version == 2:
        return CRI_V2
    raise ConfigError(f"containerd config version {version!r} is not supported (1.6 reads 1 "
                      "and 2)")


def _cri_section(doc: Mapping[str, Any], plugin: str) -> Mapping[str, Any] | None:
    plugins = doc.get("plugins")
    if not isinstance(plugins, Mapping):
        return None
    section = plugins.get(plugin)
    return section if isinstance(section, Mapping) else None


def plan(main: ConfigFile, imports: Sequence[ConfigFile], drop_in: str | None) -> Plan:
    """`imports` in the order containerd merges them (after the main file)."""
    plugin = cri_plugin(main.doc.get("version"))
    for item in imports:
        if item.doc.get("version", main.doc.get("version")) != main.doc.get("version"):
            raise ConfigError(f"{item.path}: its version differs from {main.path}'s; "
                              "containerd would read its plugin names differently")
    holders = [f for f in (main, *imports) if _cri_section(f.doc, plugin) is not None]
    cri_file = holders[-1] if holders else main
    section = _cri_section(cri_file.doc, plugin) or {}
    containerd = section.get("containerd", {})
    previous = containerd.get("snapshotter", "") if isinstance(containerd, Mapping) else ""
    return Plan(cri_file.path, ("plugins", plugin, "containerd"), drop_in or main.path,
                str(previous))


def proxy_plugin_table(socket: str) -> dict[str, str]:
    return {"type": "snapshot", "address": socket}
