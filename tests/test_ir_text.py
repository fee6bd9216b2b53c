"""IR as text: hand-written IR files run through passes (tests/ir/*.tir, FileCheck style),
exact print/parse round trips on every bundled model, and compiling from an edited dump.

A file in tests/ir/ is IR text with directives in `#` comments:
    # RUN: deps flags=False | schedule sms=2 | prefetch | layout | verify    (in order)
    # CHECK: text ... more text    (an output line holding the pieces in order; CHECKs in order)
    # ERROR: text                  (the run fails with a ParseError/VerifyError holding it)
A RUN step is a stage of compiler/pipeline.py's STAGE_TABLE, run as the pipeline runs it
(its pass, then its checks), with `key=value` setting an option (`sms` the target's SMs)
for it and the steps after; `verify` runs the checks of every stage up to the one the IR
is at; `parse` only parses.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tilert_compiler as tc
from tilert_compiler.cli import main
from tilert_compiler.codegen.nvcc import find_nvcc
from tilert_compiler.driver import compile_from_ir
from tilert_compiler.dumps import read_dump, write_dumps
from tilert_compiler.ir.parse import ParseError, parse, parse_dump, parse_us
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import Schedule, TileProgram, format_us
from tilert_compiler.ir.verify import VerifyError
from tilert_compiler.models import bundled_names
from tilert_compiler.options import Options
from tilert_compiler.pipeline import (
    RESUMABLE,
    Context,
    check_through,
    format_stage,
    latest_stage,
    resume_pipeline,
    run_stages,
    stage,
)

IR_FILES = sorted((Path(__file__).parent / "ir").glob("*.tir"))


# ---------------------------------------------------------------- hand-written IR files


def _directives(text: str, key: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^# {key}:(.*)$", text, re.M)]


def _run_steps(ir, run: str, origin: str):
    ctx = Context(Target(sms=len(ir.sm_lists)) if isinstance(ir, Schedule) else Target(), Options())
    at = latest_stage(ir)
    for step in (s.strip() for s in run.split("|")):
        name, *kv = step.split()
        for key, value in (x.split("=") for x in kv):
            if key == "sms":
                ctx = replace(ctx, target=replace(ctx.target, sms=int(value)))
            else:
                ctx = replace(ctx, options=ctx.options.with_(**{key: ast.literal_eval(value)}))
        if name == "verify":
            check_through(at, ir, ctx)
        elif name != "parse":
            ir = run_stages((stage(name),), ir, ctx, lambda *_: None)
            at = name
    return ir


def _check_lines(out: str, checks: list[str], origin: str) -> None:
    lines = out.splitlines()
    at = 0
    for check in checks:
        pieces = check.split(" ... ")
        for i in range(at, len(lines)):
            pos = 0
            for piece in pieces:
                pos = lines[i].find(piece, pos)
                if pos < 0:
                    break
                pos += len(piece)
            if pos >= 0:
                at = i + 1
                break
        else:
            raise AssertionError(f"{origin}: no line after line {at} matches '{check}':\n{out}")


@pytest.mark.parametrize("path", IR_FILES, ids=[p.stem for p in IR_FILES])
def test_ir_file(path: Path):
    text = path.read_text()
    (run,) = _directives(text, "RUN")
    checks, errors = _directives(text, "CHECK"), _directives(text, "ERROR")
    assert checks or errors, f"{path.name}: nothing to check"
    try:
        out_ir = _run_steps(parse(text, path.name), run, path.name)
    except (ParseError, VerifyError) as e:
        assert errors, f"{path.name}: unexpected {type(e).__name__}: {e}"
        assert "\n" not in str(e)
        for err in errors:
            assert err in str(e), f"{path.name}: expected '{err}' in: {e}"
        return
    assert not errors, f"{path.name}: expected an error, got:\n{format_stage(out_ir)}"
    out = format_stage(out_ir)
    _check_lines(out, checks, path.name)
    assert parse(out) == out_ir  # whatever a pass produced prints and parses back


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", bundled_names())
def test_every_stage_of_every_bundled_model_parses_back_exactly(name: str):
    # Two layers keep the big models fast; the structure (every task kind) is the same.
    cm = tc.compile(name, overrides={"layers": 2}, nvcc=False)
    for after in RESUMABLE:
        ir = cm.stages[after]
        text = format_stage(ir)
        back = parse(text)
        assert back == ir, f"{name} {after}: parse(print(ir)) != ir"
        assert format_stage(back) == text


@given(st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False))
def test_predicted_times_print_in_us_and_parse_back_to_the_same_float(seconds: float):
    text = format_us(seconds)
    assert "e" not in text.lower()
    assert parse_us(text) == seconds
    assert math.isclose(float(text), seconds * 1e6, rel_tol=1e-12, abs_tol=1e-300)


def test_parse_errors_are_one_line_with_file_and_line():
    good = "tile m\n  tensor x [4] act layer=0\n  t0 = embed e layer=-1 writes=(x[0:4])\n"
    assert isinstance(parse(good), TileProgram)
    cases = {
        good.replace("writes=", "wirtes="): "m.tir:3: t0 wirtes=: unknown key",
        good.replace("t0 =", "t1 ="): "m.tir:3: t1 out of order: expected t0",
        good.replace("x[0:4]", "x[0:pos+]"): "m.tir:3: t0 writes=: expected an int",
        good + "  t1 = embed e layer=-1 waits=(c3>=1)\n": "m.tir:4: t1 names c3",
        good.replace("act", "activation"): "m.tir:2: unknown storage 'activation'",
        "schedule m\n": "m.tir:1: expected 'tile MODEL' or 'schedule MODEL sms=N'",
    }
    for text, msg in cases.items():
        with pytest.raises(ParseError) as e:
            parse(text, "m.tir")
        assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_schedules_sm_notes_must_agree_with_its_sm_lists():
    text = (
        "schedule m sms=2\n  tensor x [4] act layer=0\n  sm 0: t0\n"
        "  t0 = embed e layer=-1 writes=(x[0:4]) sm=1\n"
    )
    with pytest.raises(ParseError, match="t0 says sm=1 but is listed on sm 0"):
        parse(text)
    # Without `sm I:` lines the notes decide.
    s = parse(text.replace("  sm 0: t0\n", ""))
    assert isinstance(s, Schedule) and s.sm_lists == ((), (0,))


# ---------------------------------------------------------------- resuming and editing


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cm = tc.compile("tiny-llama", nvcc=False)
    folder = tmp_path_factory.mktemp("dumps")
    write_dumps(cm, folder)
    return cm, folder


def test_resuming_after_any_stage_gives_what_the_pipeline_gives(tiny):
    cm, _ = tiny
    for after in RESUMABLE:
        got: dict = {}
        ctx = Context.of(cm.config, cm.options)
        resume_pipeline(after, cm.stages[after], ctx, got.__setitem__)
        assert all(got[s] == cm.stages[s] for s in got), after


def test_dumps_carry_their_stage_config_and_options(tiny):
    cm, folder = tiny
    names = sorted(p.name for p in folder.glob("*.tir"))
    assert names[:3] == ["00-graph.tir", "01-fuse.tir", "02-tile.tir"]
    d = read_dump(folder / "04-schedule.tir")
    assert d.stage == "schedule" and d.config == cm.config and d.ir == cm.stages["schedule"]
    meta, _ = parse_dump((folder / "03-deps.tir").read_text())
    assert meta["stage"] == "deps" and '"weight_ring": true' in meta["options"]


def test_compiling_an_unedited_dump_gives_the_same_kernel(tiny):
    cm, folder = tiny
    again = compile_from_ir(folder / "03-deps.tir", nvcc=False)
    assert again.source == cm.source
    assert again.schedule == cm.schedule


def test_moving_a_task_to_another_sm_in_a_dump_moves_it_and_keeps_the_logits(tiny):
    cm, folder = tiny
    text = (folder / "04-schedule.tir").read_text()
    lists = cm.schedule.sm_lists
    moved = lists[0][-1]  # SM 0's last task joins SM 1's list, in global order
    new0, new1 = lists[0][:-1], tuple(sorted(lists[1] + (moved,)))
    text = text.replace(_sm_line(0, lists[0]), _sm_line(0, new0))
    text = text.replace(_sm_line(1, lists[1]), _sm_line(1, new1))
    text = re.sub(rf"^(  t{moved} = .*) sm=0 ", r"\1 sm=1 ", text, flags=re.M)
    edited = folder / "edited-schedule.tir"
    edited.write_text(text)
    cm2 = compile_from_ir(edited, nvcc=False)
    assert cm2.schedule.sm_lists[0] == new0 and cm2.schedule.sm_lists[1] == new1
    assert cm2.schedule.sm_of()[moved] == 1
    tokens = [3, 1, 4]
    torch.testing.assert_close(cm2.interpret(tokens), cm.interpret(tokens), rtol=0, atol=0)


def _sm_line(sm: int, ids: tuple[int, ...]) -> str:
    return f"  sm {sm}:" + "".join(f" t{t}" for t in ids) + "\n"


def test_resuming_from_the_tile_dump_reschedules_for_other_sms(tiny):
    _, folder = tiny
    cm4 = compile_from_ir(folder / "02-tile.tir", overrides={"target": {"sms": 4}}, nvcc=False)
    assert len(cm4.schedule.sm_lists) == 4
    assert cm4.manifest["sms"] == 4


def test_an_edit_that_drops_a_wait_fails_verification_with_one_line_exit_2(tiny, capsys):
    cm, folder = tiny
    deps_ir = cm.stages["deps"]
    victim = next(t for t in deps_ir.tasks if t.kind == "linear_residual")
    text = (folder / "03-deps.tir").read_text()
    line = next(x for x in text.splitlines() if x.startswith(f"  t{victim.id} = "))
    # its deps and (without flags) its waits: with flags it polls the data of its deps
    cut = re.sub(r" deps=\(.*?\)( waits=\(.*?\))?", "", line)
    assert cut != line
    edited = folder / "edited-deps.tir"
    edited.write_text(text.replace(line, cut))
    rc = main(["--from-ir", str(edited), "-o", str(folder / "out"), "--no-nvcc", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "VerifyError" in err
    assert f"t{victim.id} reads" in err and "without waiting" in err


# ---------------------------------------------------------------- the kernel plan


def test_the_plan_stage_is_dumped_with_one_line_per_field(tiny):
    cm, folder = tiny
    text = (folder / "07-plan.tir").read_text()
    plan = cm.stages["plan"].plan
    assert read_dump(folder / "07-plan.tir").ir == cm.stages["plan"]
    assert f"  plan stages = {plan.stages}\n" in text
    assert f"  plan scratch_floats = {plan.scratch_floats}\n" in text
    assert f"= {plan.smem_bytes} bytes of shared memory" in text
    assert "plan " not in (folder / "06-layout.tir").read_text()


def _edit_plan(folder, tmp_path, old: str, new: str):
    text = (folder / "07-plan.tir").read_text()
    assert f"  plan {old}\n" in text
    edited = tmp_path / "07-plan.tir"
    edited.write_text(text.replace(f"  plan {old}\n", f"  plan {new}\n"))
    return edited


def test_an_edited_plan_is_the_plan_compiled(tiny, tmp_path):
    """tiny-llama's ring is 2 stages deep; a dump edited to 3 builds a kernel with 3, and
    the manifest says so; the tasks and their logits are the same."""
    cm, folder = tiny
    assert cm.schedule.plan.stages == 2 and "kStages = 2;" in cm.source
    edited = _edit_plan(folder, tmp_path, "stages = 2", "stages = 3")
    cm3 = compile_from_ir(edited, nvcc=False)
    assert tuple(cm3.stages) == ("plan",) and cm3.schedule.plan.stages == 3
    assert "kStages = 3;" in cm3.source and cm3.manifest["weight_ring"]["stages"] == 3
    assert cm3.manifest["smem_bytes"] == cm.manifest["smem_bytes"] + cm3.schedule.plan.stage_bytes
    assert replace(cm3.schedule, plan=None) == replace(cm.schedule, plan=None)
    tokens = [3, 1, 4]
    torch.testing.assert_close(cm3.interpret(tokens), cm.interpret(tokens), rtol=0, atol=0)


@pytest.mark.parametrize(
    "old, new, error",
    [
        ("stages = 2", "stages = 100", "bytes of shared memory, the target allows"),
        ("stages = 2", "stages = 1", "a ring has 2 stages or more"),
        ("in_flight = 1", "in_flight = 3", "1 to stages copies in flight"),
        (
            "scratch_floats = 4544",
            "scratch_floats = 100",
            "task kind sample_V256_C64_P8 needs 4544",
        ),
        ("consumers = 224", "consumers = 256", "one warp feeds the ring"),
        ("threads = 256", "threads = 512", "the target's blocks have 256"),
        ("stage_bytes = 32768", "stage_bytes = 100", "must be whole KiB"),
        ("ring = True", "ring = False", "option weight_ring = True: edit both"),
        ("stages = 2", "stages = 'two'", "plan stages must be an int"),
        ("stages = 2", "depth = 2", "'plan depth' is not a field of the kernel plan"),
    ],
)
def test_a_plan_that_cannot_work_is_one_line_exit_2(tiny, tmp_path, capsys, old, new, error):
    _, folder = tiny
    edited = _edit_plan(folder, tmp_path, old, new)
    rc = main(["--from-ir", str(edited), "-o", str(tmp_path / "out"), "--no-nvcc", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and error in err, err
    assert not (tmp_path / "out").exists()


def test_a_plan_missing_a_field_names_it(tiny, tmp_path):
    _, folder = tiny
    text = (folder / "07-plan.tir").read_text()
    edited = tmp_path / "07-plan.tir"
    edited.write_text(re.sub(r"^  plan stages = .*\n", "", text, flags=re.M))
    with pytest.raises(ParseError, match="the kernel plan has no stages"):
        read_dump(edited)


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed")
def test_register_relief_starts_from_the_plan_of_the_dump(tiny, tmp_path, monkeypatch):
    """Where ptxas spills, the compiler takes the next variant of the plan it was given:
    a dump whose plan already holds the task-list bounds in shared memory goes on to the
    next choice. The plan stage's output stays as it was; the kernel's is the relieved."""
    from tilert_compiler import driver
    from tilert_compiler.codegen.nvcc import Resources

    _, folder = tiny
    edited = _edit_plan(folder, tmp_path, "lean_dispatch = False", "lean_dispatch = True")
    builds = []

    def spills_once(source, arch, kernel, **kw):
        builds.append(source)
        spill = 8 if len(builds) == 1 else 0
        return b"\x7fELF", Resources(200, spill, spill, 0, 0, "ptxas"), ""

    monkeypatch.setattr(driver, "compile_cubin", spills_once)
    cm = compile_from_ir(edited, prefill_chunk=0)
    assert len(builds) == 2
    (choice,) = cm.resources.choices
    assert "error word copied to shared memory" in choice
    assert not cm.stages["plan"].plan.error_copy and cm.schedule.plan.error_copy
    assert cm.schedule.plan.lean_dispatch


def test_a_dump_without_a_header_needs_the_model_named(tiny, tmp_path):
    cm, _ = tiny
    cm.dump_ir(tmp_path)
    full = tmp_path / "04-schedule.tir"
    assert read_dump(full).stage == "schedule"  # the API's dumps carry their header too
    plain = tmp_path / "plain.tir"  # a bare printed IR, e.g. cm.ir("schedule")
    plain.write_text(cm.ir("schedule"))
    with pytest.raises(ParseError, match="name the model too"):
        read_dump(plain)
    assert read_dump(plain, "tiny-llama").stage == "schedule"


# ---------------------------------------------------------------- explain and pictures


def test_explain_lists_every_op_and_compares_the_prediction_with_the_floor(tiny):
    from tilert_compiler.explain import explain, weight_bytes

    cm, _ = tiny
    text = explain(cm.schedule, cm.config.target)
    ops = dict.fromkeys(t.op for t in cm.schedule.program.tasks)
    for op in ops:
        assert re.search(rf"^\s*(-|\d+)?\s+{re.escape(op)}\s", text, re.M), op
    step_us = max(e for _, e in cm.schedule.predicted) * 1e6
    floor_us = weight_bytes(cm.schedule) / cm.config.target.hbm_bytes_per_s * 1e6
    assert f"predicted step  {step_us:9.1f} us" in text
    assert f"floor           {floor_us:9.1f} us" in text


def test_pictures_draw_the_schedule_and_a_layer_graph(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    from tilert_compiler.pictures import write_pictures

    cm, _ = tiny
    files = {p.name: p for p in write_pictures(cm.schedule, cm.config.target, tmp_path)}
    for name in ("schedule", "schedule-layer0", "deps-layer0"):
        assert files[f"{name}.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in files[f"{name}.svg"].read_text()[:2000]
    dot = files["deps-layer0.dot"].read_text()
    layer0 = [t for t in cm.schedule.program.tasks if t.layer == 0]
    assert dot.startswith("digraph") and all(f"  t{t.id} [" in dot for t in layer0)


# ---------------------------------------------------------------- dumps of older compilers


def _as_before_the_retirement(text: str) -> str:
    """A dump as commit 41e7d7c wrote it: the retired options at their defaults in the
    header and (after prefetch) the schedule, and an empty prefetch plan on every task."""
    text = text.replace("# options: {", '# options: {"l2_prefetch": false, "l2_window_kb": null, ')
    text = text.replace(', "flags":', ', "fine_deps": true, "mma_gemv": false, "flags":')
    text = text.replace(
        "  option weight_ring = True\n",
        "  option l2_prefetch = False\n  option weight_ring = True\n  option l2_window = 0\n",
    )
    return re.sub(r"^(  t\d+ = .*)$", r"\1 prefetch=()", text, flags=re.M)


def test_a_dump_from_before_the_retired_options_compiles_the_same(tiny, tmp_path):
    cm, folder = tiny
    old = tmp_path / "05-prefetch.tir"
    old.write_text(_as_before_the_retirement((folder / "05-prefetch.tir").read_text()))
    assert '"mma_gemv": false' in old.read_text() and "option l2_window = 0" in old.read_text()
    again = compile_from_ir(old, nvcc=False)
    assert again.source == cm.source and again.schedule == cm.schedule


@pytest.mark.parametrize(
    "old, new, error",
    [
        ('"mma_gemv": false', '"mma_gemv": true', "option mma_gemv was removed"),
        ('"fine_deps": true', '"fine_deps": false', "option fine_deps was removed"),
        ('"l2_prefetch": false', '"l2_prefetch": true', "option l2_prefetch was removed"),
        ("option l2_window = 0", "option l2_window = 98304", "'option l2_window = 98304'"),
        (" prefetch=()", " prefetch=(w[0:8])", "L2 prefetch plan went with option l2_prefetch"),
    ],
)
def test_a_dump_that_sets_a_retired_option_is_one_line_exit_2(
    tiny, tmp_path, capsys, old, new, error
):
    _, folder = tiny
    text = _as_before_the_retirement((folder / "05-prefetch.tir").read_text())
    assert old in text
    edited = tmp_path / "05-prefetch.tir"
    edited.write_text(text.replace(old, new, 1))
    with pytest.raises(ParseError, match=re.escape(error)):
        compile_from_ir(edited, nvcc=False)
    rc = main(["--from-ir", str(edited), "-o", str(tmp_path / "out"), "--no-nvcc", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and error in err
    assert not (tmp_path / "out").exists()
