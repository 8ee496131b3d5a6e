"""`imagecache snapshotter configure`: point containerd's CRI plugin at the node snapshotter.

Reads the main config and the files it imports (tomllib), plans with
webhook.snapshotter.core.containerd_config where each change goes, and edits with tomlkit, which
keeps every other key, comment and the layout as they were. Files are replaced atomically and the
first edit of each keeps a copy (`<file>.before-imagecache`) for rolling back. Running it
again changes nothing and says so.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import tomlkit

from webhook.snapshotter.core.containerd_config import (
    PLUGIN_NAME,
    ConfigError,
    ConfigFile,
    plan,
    proxy_plugin_table,
)

BACKUP_SUFFIX = ".before-imagecache"


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; give containerd's config file with "
                          "--containerd-config (containerd config dump shows what it reads)"
                          ) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it first") from None


def _imports(main: Path, doc: dict[str, Any]) -> list[Path]:
    """containerd's order: each entry as written (relative to the main file's directory),
    globs expanded and sorted."""
    found: list[Path] = []
    for entry in doc.get("imports", []):
        pattern = entry if os.path.isabs(entry) else str(main.parent / entry)
        found += [Path(p) for p in sorted(glob.glob(pattern))]
    return found


def _covered(main: Path, doc: dict[str, Any], path: Path) -> bool:
    """Would containerd import `path` (which may not exist yet)?"""
    target = str(path.resolve())
    for entry in doc.get("imports", []):
        pattern = entry if os.path.isabs(entry) else str(main.parent / entry)
        if fnmatch.fnmatchcase(target, str(Path(pattern).parent.resolve() / Path(pattern).name)):
            return True
    return False


def _table(doc: Any, keys: tuple[str, ...]) -> Any:
    table = doc
    for key in keys:
        if key not in table:
            table[key] = tomlkit.table(is_super_table=key != keys[-1])
        table = table[key]
    return table


def _write(path: Path, text: str) -> None:
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if path.exists() and not backup.exists():
        shutil.copy2(path, backup)
    temp = path.with_name(f".{path.name}.imagecache-tmp")
    temp.write_text(text)
    if path.exists():
        shutil.copymode(path, temp)
    with open(temp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, path)


def configure(config: Path, socket: str, drop_in: Path | None,
              snapshotter: str = PLUGIN_NAME) -> int:
    try:
        return _configure(config, socket, drop_in, snapshotter)
    except ConfigError as exc:
        print(f"imagecache snapshotter configure: {exc}", file=sys.stderr)
        return 2


def _configure(config: Path, socket: str, drop_in: Path | None, snapshotter: str) -> int:
    if not os.path.isabs(socket):
        raise ConfigError(f"--socket {socket!r} must be an absolute path")
    main_text, main_doc = _read(config)
    imported = [ConfigFile(str(p), _read(p)[1]) for p in _imports(config, main_doc)]
    target = plan(ConfigFile(str(config), main_doc), imported,
                  str(drop_in) if drop_in else None)
    texts: dict[str, str] = {str(config): main_text}
    for item in imported:
        texts[item.path] = Path(item.path).read_text()
    if drop_in is not None:
        texts.setdefault(str(drop_in), drop_in.read_text() if drop_in.exists() else
                         "# imagecache node snapshotter: containerd proxy plugin\n")
    docs = {path: tomlkit.parse(text) for path, text in texts.items()}

    cri = _table(docs[target.cri_file], target.cri_path)
    cri["snapshotter"] = snapshotter
    if snapshotter == PLUGIN_NAME:
        # CRI then labels layer Prepares with the image they belong to: how the snapshotter
        # knows which image to remove when a disk-backed layer is gone (docs/snapshotter.md).
        cri["disable_snapshot_annotations"] = False
        plugins = _table(docs[target.proxy_file], ("proxy_plugins",))
        plugins[PLUGIN_NAME] = proxy_plugin_table(socket)
    if drop_in is not None and not _covered(config, main_doc, drop_in):
        imports = docs[str(config)].get("imports")
        if imports is None:
            docs[str(config)]["imports"] = [str(drop_in)]
        else:
            imports.append(str(drop_in))

    changed = [path for path, doc in docs.items() if tomlkit.dumps(doc) != texts[path]]
    for path in changed:
        _write(Path(path), tomlkit.dumps(docs[path]))
        print(f"changed {path}")
    if not changed:
        print(f"containerd is configured already (CRI snapshotter {snapshotter!r} in "
              f"{target.cri_file}); containerd need not be restarted")
        return 0
    print(f"CRI snapshotter: {target.previous or 'overlayfs (default)'} -> {snapshotter} "
          f"(in {target.cri_file}); proxy plugin {PLUGIN_NAME} at {socket} "
          f"(in {target.proxy_file})")
    print("containerd must be restarted (systemctl restart containerd). Images unpacked for "
          "the previous snapshotter are unpacked again for this one on their next pull; a "
          "sandbox image imported locally (ctr images import) must be imported again.")
    return 0
