"""IR dump files: every stage written with a header, and one read back for `--from-ir`.

A dump is the stage's text form (`ir/tile.py`, `ir/graph.py`) after a few `# key: value`
lines: `stage` (which stage's output it is), `options` and `config` (the ModelConfig as
JSON), so an edited dump compiles on its own: `tilert-compile --from-ir 03-deps.tir`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tilert_compiler.ir.parse import ParseError, parse, parse_meta
from tilert_compiler.ir.prefill import format_prefill
from tilert_compiler.ir.tile import Schedule, TileProgram
from tilert_compiler.models.config import load_config
from tilert_compiler.models.schema import ModelConfig
from tilert_compiler.models.text import ConfigTypeError, parse_json, read_text, show_path
from tilert_compiler.options import RETIRED, Options, retired_error
from tilert_compiler.pipeline import RESUMABLE, STAGES, format_stage, latest_stage, stage

# Options that change what the stages produce or what codegen emits; the rest (where to
# dump, the cache folder, whether nvcc runs) are about the run that made the dump only.
_RUN_ONLY = ("dump_ir", "nvcc")
_DUMPED_OPTIONS = tuple(f.name for f in fields(Options) if f.name not in _RUN_ONLY)
# Debug builds a dump may record but never switches on by itself: an edited '# options:'
# line must not turn a dump into a fault-injection or profiling build unasked.
_DEBUG_OPTIONS = {
    "fault_skip_task": ("fault_skip_task=N to compile_from_ir()", -1),
    "profile": ("--profile (profile=True)", False),
}
MAX_DUMP_BYTES = 1 << 30  # a qwen3-8b schedule dump is a few MB


def format_dump(
    stage: str, ir: Any, config: ModelConfig | None = None, opts: Options | None = None
):
    """A stage's IR as a dump file's text: the header, then the IR."""
    head = [f"# tilert-compile IR after stage {STAGES.index(stage)} of {' > '.join(STAGES)}"]
    if stage in RESUMABLE:
        head.append("# edit it, then: tilert-compile --from-ir THIS_FILE [-o OUT_DIR]")
    head.append(f"# stage: {stage}")
    if opts is not None:
        head.append(f"# options: {json.dumps({k: getattr(opts, k) for k in _DUMPED_OPTIONS})}")
    if config is not None:
        head.append(f"# config: {json.dumps(config.to_dict())}")
    return "\n".join(head) + "\n" + format_stage(ir)


def dump_name(stage: str) -> str:
    return f"{STAGES.index(stage):02d}-{stage}.tir"


def write_dumps(cm: Any, folder: str | os.PathLike) -> list[Path]:
    """Every stage `cm` (a CompiledModel) kept: 00-graph.tir, 01-fuse.tir, ...; then its
    prefill program, if it has one: prefill.tir (ir/prefill.py's text, which parse_prefill
    reads back) and each tile program as TileLang's TIR script (prefill-<kernel>.py)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, ir in cm.stages.items():
        p = folder / dump_name(name)
        p.write_text(format_dump(name, ir, cm.config, cm.options))
        out.append(p)
    tiles = getattr(cm, "tiles", None)
    if tiles is not None:
        p = folder / "prefill.tir"
        p.write_text("# tilert-compile: the prefill program\n" + format_prefill(tiles.program))
        out.append(p)
        for name, script in tiles.scripts.items():
            p = folder / f"prefill-{name}.py"
            p.write_text(f"# the tile program {name}, as TileLang's TIR script\n{script}")
            out.append(p)
    return out


@dataclass(frozen=True)
class Dump:
    stage: str  # the stage whose output `ir` is: one of pipeline.RESUMABLE
    ir: TileProgram | Schedule
    config: ModelConfig
    options: dict[str, Any]  # the dump's `# options:` (Options fields), may be empty


def read_dump(
    path: str | os.PathLike,
    source: str | os.PathLike | dict | ModelConfig | None = None,
    overrides: dict | None = None,
    given: Collection[str] = (),
) -> Dump:
    """Parse a dump for resuming. The config is `source` when given, else the dump's
    `# config:` line; `overrides` (our yaml schema) apply on top of either. The dump's
    options are type-checked, and a debug option it switches on is refused unless named
    in `given` (the options the caller sets itself)."""
    path = Path(path)
    text = read_text(path, "tilert IR dump", limit=MAX_DUMP_BYTES, error=ParseError)
    meta = parse_meta(text)
    after = meta.get("stage") or _stage_from_name(path)
    if after is None:  # a bare printed IR: the latest stage whose output it could be
        ir = parse(text, str(path))
        after = latest_stage(ir)
    elif after in RESUMABLE:  # its level's parser: a tile IR for a schedule is one line
        ir = stage(after).level.parse(text, str(path))  # type: ignore[misc]
    else:
        raise ParseError(
            f"{path}: '# stage: {after}' cannot be resumed; stages that can: {', '.join(RESUMABLE)}"
        )
    if isinstance(source, ModelConfig):
        cfg = load_config(source.to_dict(), overrides=overrides)
    elif source is not None:
        cfg = load_config(source, overrides=overrides)
    elif "config" in meta:
        where = f"{show_path(path)}: '# config:'"
        cfg = load_config(parse_json(meta["config"], where, error=ParseError), overrides=overrides)
    else:
        raise ParseError(
            f"{path}: no '# config:' line; name the model too: "
            f"tilert-compile MODEL --from-ir {path}"
        )
    if isinstance(ir, Schedule):
        ir = _without_retired_options(ir, path)
    if isinstance(ir, Schedule) and len(ir.sm_lists) != cfg.target.sms:
        raise ParseError(
            f"{path}: schedules {len(ir.sm_lists)} SMs but the target has {cfg.target.sms}; "
            f"pass --sms {len(ir.sm_lists)}, or resume from the deps dump to reschedule"
        )
    where = f"{show_path(path)}: '# options:'"
    options = parse_json(meta["options"], where, error=ParseError) if "options" in meta else {}
    if not isinstance(options, dict):
        raise ParseError(f"{where} must be a JSON object (got {type(options).__name__})")
    for name in sorted(set(options) & set(RETIRED)):
        if why := retired_error(name, options[name]):
            raise ParseError(f"{where} {why}; remove it from the line")
    options = {k: v for k, v in options.items() if k in _DUMPED_OPTIONS}
    try:
        Options(**options)
    except ConfigTypeError as e:
        raise ParseError(f"{where} {e}") from None
    for name, (how, default) in _DEBUG_OPTIONS.items():
        if options.get(name, default) != default and name not in given:
            raise ParseError(
                f"{where} sets the debug option {name}={options[name]!r}, which a dump does "
                f"not switch on by itself; pass {how} to build it, or remove it from the line"
            )
    return Dump(after, ir, cfg, options)


# Schedule options the prefetch pass recorded for option l2_prefetch, with the values they
# had without it: a dump taken before it went carries them.
_RETIRED_SCHEDULE_OPTIONS = {"l2_prefetch": False, "l2_window": 0}


def _without_retired_options(ir: Schedule, path: Path) -> Schedule:
    for name, value in ir.options:
        kept = _RETIRED_SCHEDULE_OPTIONS.get(name)
        if kept is not None and value != kept:
            raise ParseError(
                f"{path}: 'option {name} = {value!r}': {retired_error('l2_prefetch', True)}; "
                f"set it to {kept!r} or remove the line"
            )
    options = tuple((k, v) for k, v in ir.options if k not in _RETIRED_SCHEDULE_OPTIONS)
    return replace(ir, options=options)


def _stage_from_name(path: Path) -> str | None:
    m = re.fullmatch(r"\d+-(\w+)\.tir", path.name)
    return m.group(1) if m and m.group(1) in RESUMABLE else None
