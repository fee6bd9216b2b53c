"""The artifact on disk: what the compiler writes and the runtime loads.

manifest.json   config, target, kernel name, variants, arenas, tensor layout, versions
tasks.npz       the task table (ir.tasktable)
kernel.cu       the generated source
kernel.cubin    nvcc's output for the target arch (absent if built without nvcc)
resources.txt   ptxas's report: registers, spills, shared memory
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tilert_compiler.ir.tasktable import TaskTable, Variant

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TASKS = "tasks.npz"
SOURCE = "kernel.cu"
CUBIN = "kernel.cubin"
RESOURCES = "resources.txt"


class ArtifactError(ValueError):
    """The artifact is missing, damaged, or built for something else."""


@dataclass
class Artifact:
    manifest: dict
    table: TaskTable
    source: str
    cubin: bytes | None

    @property
    def variants(self) -> list[Variant]:
        return self.table.variants

    def tensor(self, name: str) -> dict:
        for t in self.manifest["tensors"]:
            if t["name"] == name:
                return t
        raise KeyError(name)


def variants_to_json(vs: list[Variant]) -> list[dict]:
    return [{"kind": v.kind, "static": dict(v.static)} for v in vs]


def variants_from_json(js: list[dict]) -> list[Variant]:
    return [Variant(v["kind"], tuple(v["static"].items())) for v in js]


def write_artifact(path: str | os.PathLike, art: Artifact) -> Path:
    """Writes into a temporary sibling folder, then renames: never a half-written artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / MANIFEST).write_text(json.dumps(art.manifest, indent=1, sort_keys=True))
        art.table.save(tmp / TASKS)
        (tmp / SOURCE).write_text(art.source)
        if art.cubin is not None:
            (tmp / CUBIN).write_bytes(art.cubin)
        res = art.manifest.get("resources")
        if res:
            (tmp / RESOURCES).write_text(res.get("report", "") + "\n")
        keep = path.with_name(path.name + ".old") if path.exists() else None
        if keep is not None:
            if keep.exists():
                shutil.rmtree(keep)
            path.rename(keep)
        tmp.rename(path)
        if keep is not None:
            _merge_back(keep, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _merge_back(old: Path, new: Path) -> None:
    """Keep what the user put beside the artifact (e.g. ir/ dumps), drop our old files."""
    for entry in old.iterdir():
        if (
            entry.name not in (MANIFEST, TASKS, SOURCE, CUBIN, RESOURCES)
            and not (new / entry.name).exists()
        ):
            entry.rename(new / entry.name)
    shutil.rmtree(old)


def load_artifact(path: str | os.PathLike, *, need_cubin: bool = False) -> Artifact:
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST}; is this a tilert-compile output folder?")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e.msg} at line {e.lineno})") from None
    fmt = manifest.get("format")
    if fmt != FORMAT_VERSION:
        raise ArtifactError(
            f"{mf}: artifact format {fmt!r}, this runtime reads format {FORMAT_VERSION}; "
            "recompile with this version of tilert-compile"
        )
    try:
        table = TaskTable.load(path / TASKS, variants_from_json(manifest["variants"]))
    except (OSError, ValueError, KeyError) as e:
        raise ArtifactError(f"{path / TASKS}: unreadable task table ({e})") from None
    src = (path / SOURCE).read_text() if (path / SOURCE).is_file() else ""
    cubin = (path / CUBIN).read_bytes() if (path / CUBIN).is_file() else None
    if need_cubin:
        if cubin is None:
            raise ArtifactError(f"{path}: no {CUBIN}; compile on a machine with nvcc")
        if len(cubin) < 64 or cubin[:4] != b"\x7fELF":
            raise ArtifactError(f"{path / CUBIN}: truncated or not a cubin; recompile")
    return Artifact(manifest, table, src, cubin)
