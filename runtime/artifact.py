"""The artifact on disk: what the compiler writes and the runtime loads.

manifest.json   config, target, kernel name, variants, arenas, tensor layout, versions
tasks.npz       the task table (ir.tasktable)
kernel.cu       the generated source, the headers of codegen/cuda/ inlined (compiles alone)
kernel.cubin    nvcc's output for the target arch (absent if built without nvcc)
resources.txt   ptxas's report: registers, spills, shared memory
prefill.json    the prefill program (runtime/prefill.py), with prefill.cu and prefill.cubin,
                when the compiler built one

Those are the artifact's own files; the manifest's "tool" marks the folder as one. Writing
(StagedArtifact) replaces or deletes nothing else, and a folder appears whole or not at all.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import shutil
import signal
import stat
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tilert_compiler.ir.kinds import KINDS, NO_OFFSET
from tilert_compiler.ir.precision import FP8
from tilert_compiler.ir.target import KNOWN_ARCHS
from tilert_compiler.ir.tasktable import (
    F_ARG0,
    F_KIND,
    F_NWAIT,
    F_SIGNAL,
    F_WAIT,
    RECORD,
    TaskTable,
    Variant,
)
from tilert_compiler.models.config import load_config
from tilert_compiler.models.text import ConfigError
from tilert_compiler.runtime.prefill import PrefillError, read_spec

# 2: kernel Params gained the multi-step fields; the task table a sample task.
# 3: Params.n_rows.
# 4: no L2 prefetch plan: the records lose n_prefetch and prefetch_at, tasks.npz its
# prefetch table, Params its prefetch pointer and n_rows (Params: ir/tasktable.py PARAMS).
# 5: FP8 weights: a manifest tensor may say dtype fp8e4m3, its scale block, row_bytes and
# its arena elements (2-byte units: e4m3 rows with their scales, ir/precision.py); GEMV
# variants may have a QBK static.
FORMAT_VERSION = 5
MANIFEST = "manifest.json"
TASKS = "tasks.npz"
SOURCE = "kernel.cu"
CUBIN = "kernel.cubin"
RESOURCES = "resources.txt"
# The prefill program: its launches and kernels' specs, CUDA source and cubin
TILES_SPEC, TILES_SOURCE, TILES_CUBIN = "prefill.json", "prefill.cu", "prefill.cubin"


class ArtifactError(ValueError):
    """The artifact is missing, damaged, or built for something else."""


@dataclass
class Artifact:
    manifest: dict
    table: TaskTable
    source: str
    cubin: bytes | None
    # The prefill program (runtime/prefill.py): (prefill.json's spec, cubin or None)
    tiles: tuple[dict, bytes | None] | None = None
    tiles_source: str | None = None

    @property
    def variants(self) -> list[Variant]:
        return self.table.variants

    def tensor(self, name: str) -> dict:
        for t in self.manifest["tensors"]:
            if t["name"] == name:
                return t
        raise KeyError(name)

    @property
    def fp8(self) -> bool:
        """Whether some weights are FP8 (the arena then holds raw 2-byte units)."""
        return any(t.get("dtype") == FP8 for t in self.manifest["tensors"])


def tensor_elements(t: dict) -> int:
    """Units a manifest tensor takes in its arena: its elements, or an FP8 weight's rows."""
    if "elements" in t:
        return t["elements"]
    n = 1
    for d in t["shape"]:
        n *= d
    return n


def variants_to_json(vs: list[Variant]) -> list[dict]:
    return [{"kind": v.kind, "static": dict(v.static)} for v in vs]


def variants_from_json(js: list[dict]) -> list[Variant]:
    return [Variant(v["kind"], tuple(v["static"].items())) for v in js]


def write_artifact(path: str | os.PathLike, art: Artifact, *, force: bool = False) -> Path:
    """Writes the artifact whole or not at all (StagedArtifact); refuses, with OutputError,
    a path that is not a new or empty folder or an earlier artifact (force: see there)."""
    with StagedArtifact(path, art, force=force) as staged:
        pass
    return staged.path


def _write_files(folder: Path, art: Artifact) -> None:
    manifest = {**art.manifest, "tool": TOOL}  # the marker (is_artifact)
    art.table.save(folder / TASKS)
    (folder / SOURCE).write_text(art.source)
    if art.cubin is not None:
        (folder / CUBIN).write_bytes(art.cubin)
    res = art.manifest.get("resources")
    if res:
        choices = "".join(f"variant choice: {c}\n" for c in res.get("choices", []))
        (folder / RESOURCES).write_text(res.get("report", "") + "\n" + choices)
    if art.tiles is not None:
        spec, tiles_cubin = art.tiles
        (folder / TILES_SPEC).write_text(json.dumps(spec, indent=1))
        (folder / TILES_SOURCE).write_text(art.tiles_source or "")
        if tiles_cubin is not None:
            (folder / TILES_CUBIN).write_bytes(tiles_cubin)
    # The manifest last: a folder is an artifact (is_artifact) only once it is whole.
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


# ---------------------------------------------------------------- writing without loss
#
# What the compiler may replace or delete in an output folder is exactly the artifact's
# own files (OWN_FILES): nothing the user put beside them, and nothing outside the folder.
# Everything is written into a hidden temporary sibling, `.<name>.tmp-<pid>-<random>`,
# and put in place by renames at the end:
#   new      (no folder, or an empty one)  one rename
#   replace  (an earlier artifact)         the old folder is renamed aside, the new one
#            into place, then what the user kept in the old one (anything not in
#            OWN_FILES) is moved back and only the old OWN_FILES are deleted
#   beside   (--force on a folder of other files)  the artifact's files are moved in one
#            by one, the manifest last; a folder already holding one of their names is
#            refused, so nothing is replaced
# SIGINT and SIGTERM wait while the renames run, so they never stop halfway.

TOOL = "tilert-compiler"  # the manifest's "tool": marks a folder as this compiler's artifact
OWN_FILES = (
    MANIFEST,
    TASKS,
    SOURCE,
    CUBIN,
    RESOURCES,
    TILES_SPEC,
    TILES_SOURCE,
    TILES_CUBIN,
)


class OutputError(ArtifactError):
    """An output path the compiler will not write: a file, a symbolic link, a folder of
    other files (without force), or one the system would not let it write."""


def is_artifact(path: str | os.PathLike) -> bool:
    """`path` holds an artifact this compiler wrote: its manifest names the tool (or, from
    before the marker, carries the compiler's own keys)."""
    try:
        m = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):  # ValueError: bad JSON or not text
        return False
    if not isinstance(m, dict):
        return False
    if "tool" in m:
        return m["tool"] == TOOL
    return {"format", "compiler_version", "source_sha256"} <= m.keys()


def check_output(path: str | os.PathLike, *, force: bool = False, cubin: bool = True) -> str:
    """How an artifact would be written at `path`: 'new', 'replace' or 'beside' (above);
    OutputError if it would not. `cubin`: whether the new artifact has one (an earlier
    artifact's cubin is replaced by a build without one only with force)."""
    path = Path(path)
    _check_writable(path, "-o")
    if not path.exists():
        return "new"
    try:
        entries = sorted(e.name for e in path.iterdir())
    except OSError as e:
        raise OutputError(f"-o {path}: cannot read the folder: {e.strerror}") from None
    if not entries:
        return "new"
    if is_artifact(path):
        if not cubin and (path / CUBIN).exists() and not force:
            raise OutputError(
                f"-o {path}: holds a build with a {CUBIN}, and this build makes none (--no-nvcc"
                " or no nvcc); give another -o, or --force to replace that build"
            )
        return "replace"
    if not force:
        raise OutputError(
            f"-o {path}: is a folder of other files, not a tilert-compile artifact; give a new"
            " or empty folder, or --force to add the artifact's files beside them"
        )
    clash = [n for n in entries if n in OWN_FILES]
    if clash:
        raise OutputError(
            f"-o {path}: already holds {', '.join(clash)}, not from tilert-compile; --force"
            " never replaces a file: move it or give another -o"
        )
    return "beside"


def check_folder(path: str | os.PathLike, what: str) -> None:
    """`path` can take files written by name (IR dumps, pictures): a folder or nothing yet,
    under folders. OutputError, naming the option `what`, if not."""
    _check_writable(Path(path), what)


def _check_writable(path: Path, what: str) -> None:
    """`path` is nothing yet or a real folder, and both it and the folder its temporary
    sibling goes in (its parent, or the nearest one that exists) can be written."""
    if path.is_symlink():
        raise OutputError(
            f"{what} {path}: is a symbolic link; give the folder itself"
            f" ({os.readlink(path)}) or another path"
        )
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: is a file, not a folder")
    up = Path(os.path.abspath(path)).parent
    while not up.exists() and up != up.parent:
        up = up.parent
    if not up.is_dir():
        raise OutputError(f"{what} {path}: {up} is a file, not a folder")
    for place in (up, path) if path.exists() else (up,):
        if not os.access(place, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {path}: cannot write in {place}")


class StagedArtifact:
    """An artifact that appears whole or not at all, with room for what goes with it.

        with StagedArtifact(out, art) as staged:     # writes art into a temporary folder
            write_dumps(cm, staged.folder(out / "ir", "--dump-ir"))
        # all in place here; an exception inside `with` leaves the disk as it was

    The constructor only checks (check_output). `folder(path)` is where to write files
    meant for `path`: inside the staged artifact if `path` lies in it, else a temporary
    sibling of `path` of its own, put in place (merged by file name) just before the
    artifact."""

    def __init__(self, path: str | os.PathLike, art: Artifact, *, force: bool = False):
        self.path = Path(os.path.abspath(path))
        self.art = art
        self.mode = check_output(self.path, force=force, cubin=art.cubin is not None)
        self.staging: Path | None = None
        self._made: list[Path] = []  # folders made for the temporary ones: removed if empty
        self._extra: list[tuple[Path, Path]] = []  # (temporary, target) outside self.path

    def __enter__(self) -> StagedArtifact:
        try:
            self._made = _make_folders(self.path.parent)
            self.staging = _temp_sibling(self.path, "tmp")
            _write_files(self.staging, self.art)
        except BaseException as e:
            self.discard()
            if isinstance(e, OSError):
                raise OutputError(f"{self.path}: cannot write: {e.strerror or e}") from None
            raise
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            self.discard()
            return
        try:
            self.commit()
        except OSError as e:
            self.discard()
            raise OutputError(f"{self.path}: cannot write: {e.strerror or e}") from None

    def folder(self, path: str | os.PathLike, what: str) -> Path:
        assert self.staging is not None, "inside `with` only"
        path = Path(os.path.abspath(path))
        check_folder(path, what)
        if path == self.path or self.path in path.parents:
            return self.staging / path.relative_to(self.path)
        try:
            self._made += _make_folders(path.parent)
            tmp = _temp_sibling(path, "tmp")
        except OSError as e:
            raise OutputError(f"{what} {path}: cannot write: {e.strerror or e}") from None
        self._extra.append((tmp, path))
        return tmp

    def commit(self) -> None:
        assert self.staging is not None
        with _signals_deferred():
            for tmp, target in self._extra:
                if os.path.lexists(target):
                    _move_into(tmp, target, dst_wins=False)
                    tmp.rmdir()
                else:
                    tmp.rename(target)
            self._extra = []
            staging, self.staging = self.staging, None
            if self.mode == "new":
                staging.rename(self.path)  # over an empty folder too
            elif self.mode == "beside":
                _move_into(staging, self.path, dst_wins=False)
                staging.rmdir()
            else:
                _replace(self.path, staging)

    def discard(self) -> None:
        """Removes the temporary folders (they hold only what this wrote) and the folders
        made for them, if empty."""
        with _signals_deferred():
            for tmp in [self.staging, *(t for t, _ in self._extra)]:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
            self.staging, self._extra = None, []
            for made in reversed(self._made):
                with contextlib.suppress(OSError):
                    made.rmdir()
            self._made = []


def _replace(path: Path, new: Path) -> None:
    """The earlier artifact at `path` by the one in `new`, keeping everything the user put
    beside it."""
    os.chmod(new, stat.S_IMODE(path.stat().st_mode))
    old = _temp_sibling(path, "old")  # an empty folder, which a rename replaces
    path.rename(old)
    try:
        new.rename(path)
    except BaseException:
        old.rename(path)
        raise
    _move_into(old, path, dst_wins=True, keep=set(OWN_FILES))
    _remove_own(old)


def _remove_own(folder: Path) -> None:
    """The artifact's own files in `folder`, then `folder` if that leaves it empty (else
    what is left is kept: something of the user's that found no place)."""
    for name in OWN_FILES:
        p = folder / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _move_into(src: Path, dst: Path, *, dst_wins: bool, keep: set[str] | None = None) -> None:
    """Moves `src`'s entries (but those named in `keep`) into `dst`, made if needed,
    merging folders by name. A file both hold: the one in dst stays and src's is deleted
    (dst_wins: dst holds the new compile's file of that name), or src's replaces it. A file
    where the other holds a folder stays in src. The manifest moves last."""
    for entry in sorted(src.iterdir(), key=lambda e: (e.name == MANIFEST, e.name)):
        if keep and entry.name in keep:
            continue
        to = dst / entry.name
        if not os.path.lexists(to):
            dst.mkdir(exist_ok=True)
            entry.rename(to)
        elif _real_dir(entry) and _real_dir(to):
            _move_into(entry, to, dst_wins=dst_wins)
            with contextlib.suppress(OSError):
                entry.rmdir()
        elif not entry.is_dir() and not to.is_dir():
            if dst_wins:
                entry.unlink()
            else:
                entry.replace(to)


def _real_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _temp_sibling(path: Path, kind: str) -> Path:
    """A new empty folder `.<name>.<kind>-<pid>-<random>` beside `path`, with the
    permissions a plain mkdir would give it."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{os.getpid()}-", dir=path.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    return tmp


def _make_folders(path: Path) -> list[Path]:
    """mkdir -p, returning the folders it made (outermost first)."""
    made = []
    for p in reversed([path, *path.parents]):
        if not p.exists():
            p.mkdir()
            made.append(p)
    return made


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are handled when it ends, as they
    would have been, so a sequence of renames never stops halfway. (Outside the main
    thread signals are not ours to handle: the block runs as it is.)"""
    got: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    try:
        before = {s: signal.signal(s, lambda n, _f: got.append(n)) for s in sigs}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        for s in got:
            signal.raise_signal(s)


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
    _check_manifest(mf, manifest)
    if not (path / TASKS).is_file():
        raise ArtifactError(f"{path}: no {TASKS} (the task table); recompile")
    if not zipfile.is_zipfile(path / TASKS):  # np.load would try, and blame, pickle
        raise ArtifactError(f"{path / TASKS}: not a numpy .npz archive; recompile")
    try:
        table = TaskTable.load(path / TASKS, variants_from_json(manifest["variants"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path / TASKS}: unreadable task table ({e})") from None
    _check_table(path / TASKS, manifest, table)
    _check_records(path / TASKS, manifest, table)
    src = (path / SOURCE).read_text() if (path / SOURCE).is_file() else ""
    cubin = (path / CUBIN).read_bytes() if (path / CUBIN).is_file() else None
    if cubin is not None:
        _check_cubin(path / CUBIN, cubin, str(manifest["arch"]))
    elif need_cubin:
        raise ArtifactError(f"{path}: no {CUBIN}; compile on a machine with nvcc")
    tiles, tiles_source = None, None
    if (path / TILES_SPEC).is_file():
        try:
            spec = read_spec((path / TILES_SPEC).read_text(), manifest)
        except (PrefillError, KeyError, TypeError, AttributeError) as e:
            raise ArtifactError(f"{path / TILES_SPEC}: {e}") from None
        tc = path / TILES_CUBIN
        if need_cubin and not tc.is_file():
            raise ArtifactError(f"{path}: no {TILES_CUBIN}; recompile with nvcc")
        tiles = (spec, tc.read_bytes() if tc.is_file() else None)
        if (path / TILES_SOURCE).is_file():
            tiles_source = (path / TILES_SOURCE).read_text()
    return Artifact(manifest, table, src, cubin, tiles, tiles_source)


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
    if t.waits.ndim != 2 or t.waits.shape[1] != 2:
        raise fail(f"waits has shape {tuple(t.waits.shape)}, expected (n, 2)")
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


# ---------------------------------------------------------------- the manifest's own agreement
#
# The kernel and the interpreter index arenas with the manifest's offsets and the task
# table's arguments, and size the KV cache and the vocabulary from its config: those must
# agree with each other, or a step runs past a buffer instead of failing.

_ARENAS = ("weights", "act")


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_manifest(mf: Path, m: dict) -> None:
    """Every field the runtime reads has its type; the tensors lie inside their arenas and
    overlap nowhere; config.max_seq_len and config.vocab agree with the KV cache, the
    logits, the embedding and the attention variants."""

    def fail(msg: str) -> ArtifactError:
        return ArtifactError(f"{mf}: {msg}; recompile")

    if not isinstance(m["kernel"], str) or not m["kernel"].isidentifier():
        raise fail(f"'kernel' must be the kernel's name (got {m['kernel']!r:.40})")
    eps = m["norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise fail(f"'norm_eps' must be a number in (0, 1) (got {eps!r:.40})")
    freqs = m["rope_inv_freq"]
    if not isinstance(freqs, list) or not all(
        isinstance(f, (int, float)) and not isinstance(f, bool) for f in freqs
    ):
        raise fail("'rope_inv_freq' must be a list of numbers")
    if not isinstance(m.get("options", {}), dict):
        raise fail("'options' must be an object")
    variants = m["variants"]
    if not isinstance(variants, list) or not all(
        isinstance(v, dict)
        and v.get("kind") in KINDS
        and isinstance(v.get("static"), dict)
        and all(isinstance(k, str) and _is_count(x) for k, x in v["static"].items())
        for v in variants
    ):
        raise fail(
            "'variants' must be a list of {kind, static} with kinds "
            f"{', '.join(KINDS)} and integer statics"
        )
    arenas = m["arenas"]
    if not isinstance(arenas, dict) or set(arenas) != set(_ARENAS):
        raise fail(f"'arenas' must give the sizes of {' and '.join(_ARENAS)}")
    for name, n in arenas.items():
        if not _is_count(n):
            raise fail(f"'arenas.{name}' must be a count of elements (got {n!r:.40})")
    tensors = m["tensors"]
    if not isinstance(tensors, list):
        raise fail("'tensors' must be a list")
    shapes: dict[str, tuple[int, ...]] = {}
    spans: dict[str, list[tuple[int, int, str]]] = {a: [] for a in _ARENAS}
    for i, t in enumerate(tensors):
        if not isinstance(t, dict):
            raise fail(f"'tensors[{i}]' must be an object")
        name = t.get("name")
        if not isinstance(name, str) or name in shapes:
            raise fail(f"'tensors[{i}].name' must be a new tensor name (got {name!r:.40})")
        shape, arena, off = t.get("shape"), t.get("arena"), t.get("offset")
        if not isinstance(shape, list) or not shape or not all(map(_is_count, shape)):
            raise fail(f"tensor {name}: 'shape' must be a list of counts (got {shape!r:.40})")
        if arena not in _ARENAS or not isinstance(t.get("storage"), str):
            raise fail(f"tensor {name}: 'arena' must be weights or act (got {arena!r:.20})")
        if (arena == "weights") != (t["storage"] == "weight"):
            raise fail(f"tensor {name}: a {t['storage']} tensor in the {arena} arena")
        if not _is_count(off):
            raise fail(f"tensor {name}: 'offset' must be a count (got {off!r:.40})")
        if "dtype" in t and (t["dtype"] != FP8 or arena != "weights" or len(shape) != 2):
            raise fail(f"tensor {name}: only 2-D weights may have a dtype, {FP8}")
        n = tensor_elements(t)
        if not _is_count(n):
            raise fail(f"tensor {name}: 'elements' must be a count (got {n!r:.40})")
        if off + n > arenas[arena]:
            raise fail(
                f"tensor {name} ({arena} @{off}, {n} elements) runs past the {arena} arena's "
                f"{arenas[arena]} elements"
            )
        shapes[name] = tuple(shape)
        spans[arena].append((off, off + n, name))
    for arena, ss in spans.items():
        ss.sort()
        for (_, end, a), (start, _, b) in zip(ss, ss[1:], strict=False):
            if start < end:
                raise fail(f"tensors {a} and {b} overlap in the {arena} arena")
    cfg = m["config"]
    try:  # the model itself, as the compiler validated it (weights are bound later)
        load_config(cfg, overrides={"weights": {"random": 0}})
    except ConfigError as e:
        raise ArtifactError(f"{mf}: manifest config is invalid: {e}") from None
    for key in ("max_seq_len", "vocab"):
        if not _is_count(cfg.get(key)) or cfg[key] < 1:
            raise fail(f"'config.{key}' must be a positive integer (got {cfg.get(key)!r:.40})")
    steps, vocab = cfg["max_seq_len"], cfg["vocab"]
    for t in tensors:
        if t["storage"] == "cache" and (len(t["shape"]) != 3 or t["shape"][1] != steps):
            raise fail(
                f"'config.max_seq_len' is {steps}, but the KV cache tensor {t['name']} has "
                f"shape {t['shape']} (rows in dimension 1)"
            )
    for v in variants:  # statics bound to the config (attention's S: max_seq_len)
        for name, key in KINDS[v["kind"]].config:
            if name in v["static"] and v["static"][name] != cfg[key]:
                raise fail(
                    f"'config.{key}' is {cfg[key]}, but {v['kind']} is compiled for "
                    f"{name}={v['static'][name]}"
                )
    if shapes.get("logits") != (vocab,):
        raise fail(
            f"'config.vocab' is {vocab}, but the logits tensor has shape "
            f"{list(shapes['logits']) if 'logits' in shapes else 'none'}"
        )
    for name, shape in shapes.items():
        if name.endswith("embed_tokens.weight") and shape[0] != vocab:
            raise fail(f"'config.vocab' is {vocab}, but {name} has {shape[0]} rows")


def _check_records(where: Path, m: dict, t: TaskTable) -> None:
    """Every offset in the task table points into a tensor of its arena (w and w_*
    arguments and weight streams into the weights, the rest into the activations), and the sample
    task reads config.vocab logits."""

    def fail(msg: str) -> ArtifactError:
        return ArtifactError(f"{where}: {msg}; recompile")

    spans: dict[str, list[tuple[int, int]]] = {a: [] for a in _ARENAS}
    for x in m["tensors"]:
        spans[x["arena"]].append((x["offset"], x["offset"] + tensor_elements(x)))
    starts = {a: sorted(ss) for a, ss in spans.items()}  # disjoint (_check_manifest)

    def inside(arena: str, off: int, n: int = 1) -> bool:
        ss = starts[arena]
        k = bisect.bisect_right(ss, (off, float("inf"))) - 1
        return k >= 0 and ss[k][0] <= off and off + n <= ss[k][1]

    for i in range(len(t.records)):
        v = t.variants[int(t.records[i, F_KIND])]
        kind = KINDS[v.kind]
        for j, name in enumerate(kind.args):
            value = int(t.records[i, F_ARG0 + j])
            if name in kind.counts:
                ok = value >= 0
            else:
                ok = value == NO_OFFSET or inside(
                    "weights" if name.split("_")[0] == "w" else "act", value
                )
            if not ok:
                raise fail(f"task {i} ({v.kind}): argument {name}={value} is out of bounds")
        a = t.args(i)
        for name, key in kind.config:  # arguments bound to the config (sample's vocab)
            if name in a and a[name] != m["config"][key]:
                raise fail(f"task {i} ({v.kind}): {name}={a[name]}, not config.{key}'s")
        # Whole vectors the code reads or writes from an offset (ir/kinds.py `extents`):
        # the input of a GEMV (K), the embedding's slice of the output row, the logits.
        for name, n in kind.extents(a, dict(v.static)).items():
            if not inside("act", a[name], n):
                raise fail(
                    f"task {i} ({v.kind}): {name}={a[name]} with {n} elements runs past its tensor"
                )
    if t.stream.ndim != 2 or t.stream.shape[1] != 3:
        raise fail(f"stream has shape {tuple(t.stream.shape)}, expected (n, 3)")
    # A stream may run on from one tensor into the next (q, k and v rows): the arena
    # bounds it.
    off, n = t.stream[:, 0], t.stream[:, 1]
    bad = (off < 0) | (n < 0) | (off + n > m["arenas"]["weights"])
    if bad.any():
        k = int(bad.argmax())
        raise fail(
            f"stream entry {k} ({int(off[k])}, {int(n[k])} elements) lies outside the "
            f"weights arena's {m['arenas']['weights']}"
        )


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
