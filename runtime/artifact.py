"""The artifact on disk: what the compiler writes and the runtime loads.

manifest.json   config, target, kernel name, variants, arenas, tensor layout, versions
tasks.npz       the task table (ir.tasktable)
kernel.cu       the generated source
kernel.cubin    nvcc's output for the target arch (absent if built without nvcc)
resources.txt   ptxas's report: registers, spills, shared memory
prefill/        the prefill program (the same files), when the compiler built one
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tilert_compiler.ir.target import KNOWN_ARCHS
from tilert_compiler.ir.tasktable import (
    F_KIND,
    F_NWAIT,
    F_SIGNAL,
    F_WAIT,
    RECORD,
    TaskTable,
    Variant,
)

# 2: kernel Params gained the multi-step fields; the task table a sample task.
# 3: the prefill program (prefill/), Params.n_rows, manifest rows and row_stride.
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
TASKS = "tasks.npz"
SOURCE = "kernel.cu"
CUBIN = "kernel.cubin"
RESOURCES = "resources.txt"
PREFILL = "prefill"


class ArtifactError(ValueError):
    """The artifact is missing, damaged, or built for something else."""


@dataclass
class Artifact:
    manifest: dict
    table: TaskTable
    source: str
    cubin: bytes | None
    prefill: Artifact | None = None  # the prefill program, sharing weights and KV cache

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
        _write_files(tmp, art)
        if art.prefill is not None:
            (tmp / PREFILL).mkdir()
            _write_files(tmp / PREFILL, art.prefill)
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


def _write_files(folder: Path, art: Artifact) -> None:
    (folder / MANIFEST).write_text(json.dumps(art.manifest, indent=1, sort_keys=True))
    art.table.save(folder / TASKS)
    (folder / SOURCE).write_text(art.source)
    if art.cubin is not None:
        (folder / CUBIN).write_bytes(art.cubin)
    res = art.manifest.get("resources")
    if res:
        (folder / RESOURCES).write_text(res.get("report", "") + "\n")


def _merge_back(old: Path, new: Path) -> None:
    """Keep what the user put beside the artifact (e.g. ir/ dumps), drop our old files."""
    for entry in old.iterdir():
        if (
            entry.name not in (MANIFEST, TASKS, SOURCE, CUBIN, RESOURCES, PREFILL)
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
    except UnicodeDecodeError:
        raise ArtifactError(f"{mf}: not a text file; recompile") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mf}: must hold a JSON object; recompile")
    fmt = manifest.get("format")
    if fmt != FORMAT_VERSION:
        raise ArtifactError(
            f"{mf}: artifact format {fmt!r}, this runtime reads format {FORMAT_VERSION}; "
            "recompile with this version of tilert-compile"
        )
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ArtifactError(f"{mf}: missing {', '.join(map(repr, missing))}; recompile")
    for key in ("sms", "threads", "smem_bytes", "counters", "tasks"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ArtifactError(f"{mf}: '{key}' must be a count (got {value!r}); recompile")
    if not isinstance(manifest["arch"], str) or not isinstance(manifest["config"], dict):
        raise ArtifactError(f"{mf}: 'arch' or 'config' is malformed; recompile")
    if manifest["arch"] not in KNOWN_ARCHS:
        raise ArtifactError(
            f"{mf}: built for {manifest['arch']}; this runtime runs {', '.join(KNOWN_ARCHS)}"
        )
    if not (path / TASKS).is_file():
        raise ArtifactError(f"{path}: no {TASKS} (the task table); recompile")
    if not zipfile.is_zipfile(path / TASKS):  # np.load would try, and blame, pickle
        raise ArtifactError(f"{path / TASKS}: not a numpy .npz archive; recompile")
    try:
        table = TaskTable.load(path / TASKS, variants_from_json(manifest["variants"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path / TASKS}: unreadable task table ({e})") from None
    _check_table(path / TASKS, manifest, table)
    src = (path / SOURCE).read_text() if (path / SOURCE).is_file() else ""
    cubin = (path / CUBIN).read_bytes() if (path / CUBIN).is_file() else None
    if cubin is not None:
        _check_cubin(path / CUBIN, cubin, str(manifest["arch"]))
    elif need_cubin:
        raise ArtifactError(f"{path}: no {CUBIN}; compile on a machine with nvcc")
    prefill = None
    if (path / PREFILL).is_dir() and manifest.get("rows", 1) == 1:
        prefill = load_artifact(path / PREFILL, need_cubin=need_cubin)
        if not _prefill_fits(manifest, prefill.manifest):
            raise ArtifactError(f"{path / PREFILL}: not this model's prefill program; recompile")
    return Artifact(manifest, table, src, cubin, prefill)


def _prefill_fits(decode: dict, pre: dict) -> bool:
    """The prefill program was laid out against this decode program: the same weight arena,
    every weight and cache tensor at the same offset and of the same shape (so the same
    context length), its own activations past the decode program's. (The config itself is
    checked where the runtime reads it.)"""
    if pre.get("rows", 1) < 2 or pre["arenas"].get("weights") != decode["arenas"].get("weights"):
        return False
    home = {
        t["name"]: (t["offset"], t["shape"]) for t in decode["tensors"] if t.get("storage") != "act"
    }
    for t in pre["tensors"]:
        if t.get("storage") == "act":
            if t["offset"] < decode["arenas"]["act"]:
                return False
        elif home.get(t["name"]) != (t["offset"], t["shape"]):
            return False
    return True


# What the runtime and the interpreter read from the manifest; a missing one is a damaged
# artifact, said here rather than as a KeyError mid-run.
_REQUIRED = (
    "arch",
    "sms",
    "threads",
    "smem_bytes",
    "kernel",
    "variants",
    "arenas",
    "tensors",
    "counters",
    "tasks",
    "config",
    "norm_eps",
    "rope_inv_freq",
)


def _check_table(where: Path, m: dict, t: TaskTable) -> None:
    """The task table agrees with the manifest and with itself, so neither the kernel nor
    the interpreter can index out of bounds: every SM list in range, every task listed
    once, every kind, wait and signal naming something that exists."""

    def fail(msg: str) -> ArtifactError:
        return ArtifactError(f"{where}: {msg}; recompile")

    n, sms, counters = m["tasks"], m["sms"], m["counters"]
    shapes = {
        "records": (t.records.shape, (n, RECORD)),
        "sm_start": (t.sm_start.shape, (sms + 1,)),
        "sm_tasks": (t.sm_tasks.shape, (n,)),
    }
    for name, (have, want) in shapes.items():
        if tuple(have) != want:
            raise fail(f"{name} has shape {tuple(have)}, the manifest implies {want}")
    for name, a in (("waits", t.waits), ("prefetch", t.prefetch)):
        if a.ndim != 2 or a.shape[1] != 2:
            raise fail(f"{name} has shape {tuple(a.shape)}, expected (n, 2)")
    starts = t.sm_start.tolist()
    if (
        starts[0] != 0
        or starts[-1] != n
        or any(a > b for a, b in zip(starts, starts[1:], strict=False))
    ):
        raise fail(f"sm_start must rise from 0 to {n} tasks")
    if sorted(t.sm_tasks.tolist()) != list(range(n)):
        raise fail("sm_tasks must list every task exactly once")
    if n == 0:
        return
    kinds, nwait, at = t.records[:, F_KIND], t.records[:, F_NWAIT], t.records[:, F_WAIT]
    if kinds.min() < 0 or kinds.max() >= len(t.variants):
        raise fail(f"a task kind is outside the manifest's {len(t.variants)} variants")
    if nwait.min() < 0 or at.min() < 0 or (at + nwait).max() > len(t.waits):
        raise fail(f"a task's waits lie outside the {len(t.waits)} wait entries")
    signals = t.records[:, F_SIGNAL]
    signals = signals[signals != -1]  # -1: no counter (read only by polling tasks)
    waited = t.waits[:, 0] if len(t.waits) else signals[:0]
    for name, ids in (("signals", signals), ("waits on", waited)):
        if len(ids) and (ids.min() < 0 or ids.max() >= counters):
            raise fail(f"a task {name} a counter outside the manifest's {counters}")


_ELF_MAGIC = b"\x7fELF"
_EM_CUDA = 190


def _check_cubin(where: Path, cubin: bytes, arch: str) -> None:
    """A whole 64-bit CUDA ELF for `arch`: the header, every section's bytes and the SM
    version it was built for, so a truncated or foreign cubin fails here and not in
    cuModuleLoadData with an opaque driver code."""
    if len(cubin) < 64 or cubin[:4] != _ELF_MAGIC or cubin[4] != 2:
        raise ArtifactError(f"{where}: not a 64-bit ELF cubin; recompile")
    machine, flags = struct.unpack_from("<H", cubin, 18)[0], struct.unpack_from("<I", cubin, 48)[0]
    if machine != _EM_CUDA:
        raise ArtifactError(f"{where}: an ELF for machine {machine}, not CUDA; recompile")
    if _elf_end(cubin) > len(cubin):
        raise ArtifactError(f"{where}: truncated ({len(cubin)} bytes); recompile")
    # The SM version sits in e_flags bits 8..15 from CUDA's ELF ABI version 8 (nvcc 13
    # writes it), in bits 0..7 before.
    sm = (flags >> 8) & 0xFF if cubin[8] >= 8 else flags & 0xFF
    if str(sm) != arch.removeprefix("sm_").rstrip("a"):
        raise ArtifactError(f"{where}: built for sm_{sm}, the manifest says {arch}; recompile")


def _elf_end(elf: bytes) -> int:
    """Bytes a whole ELF64 needs: its header tables and every section's and segment's data
    (a malformed table counts as needing more than any file holds)."""
    phoff, shoff = struct.unpack_from("<QQ", elf, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", elf, 54)
    if (phnum and phentsize != 56) or (shnum and shentsize != 64):
        return len(elf) + 1
    end = max(64, phoff + 56 * phnum, shoff + 64 * shnum)
    if end > len(elf):
        return end
    for h in range(phoff, phoff + 56 * phnum, 56):  # segments: p_offset, p_filesz
        end = max(
            end, struct.unpack_from("<Q", elf, h + 8)[0] + struct.unpack_from("<Q", elf, h + 32)[0]
        )
    for h in range(shoff, shoff + 64 * shnum, 64):  # sections, but SHT_NOBITS holds no bytes
        if struct.unpack_from("<I", elf, h + 4)[0] != 8:
            end = max(end, sum(struct.unpack_from("<QQ", elf, h + 24)))
    return end
