"""The pipeline on every bundled model: stages, invariants, and nvcc on the emitted kernel."""

import re

import numpy as np
import pytest

import tilert_compiler as tc
from tilert_compiler.ir.verify import verify_program, verify_schedule
from tilert_compiler.models import bundled_names
from tilert_compiler.pipeline import STAGES

BUNDLED = bundled_names()


@pytest.fixture(scope="module", params=BUNDLED)
def compiled(request):
    return tc.compile(request.param)


def test_bundled_models_are_the_ones_promised():
    assert {"llama-3.2-1b", "qwen3-0.6b", "qwen3-8b", "tiny-llama", "tiny-qwen3"} <= set(BUNDLED)


def test_every_output_element_is_written_by_exactly_one_task(compiled):
    verify_program(compiled.stages["deps"])


def test_reads_follow_writes_and_the_schedule_completes(compiled):
    verify_schedule(compiled.schedule)


def test_every_task_is_after_its_dependencies_in_its_global_order(compiled):
    tasks = compiled.schedule.program.tasks
    for t in tasks:
        assert all(d < t.id for d in t.deps)
    for ids in compiled.schedule.sm_lists:
        assert list(ids) == sorted(ids)


def test_one_global_kernel_that_compiles_clean_for_sm_90a(compiled):
    src = compiled.source
    assert len(re.findall(r"__global__", src)) == 1
    assert compiled.cubin is not None and compiled.cubin[:4] == b"\x7fELF"
    r = compiled.resources
    assert r.spill_stores == 0 and r.spill_loads == 0, r.report
    assert r.registers <= 255


def test_kernel_code_does_not_grow_with_layers():
    small = tc.compile("tiny-llama", overrides={"layers": 2}, nvcc=False)
    big = tc.compile("tiny-llama", overrides={"layers": 12}, nvcc=False)
    assert small.source.replace("2 layers", "") == big.source.replace("12 layers", "")
    assert len(big.table.records) > len(small.table.records)


def test_every_stage_is_kept_and_printable(compiled):
    assert tuple(compiled.stages) == STAGES
    for s in STAGES:
        assert compiled.ir(s).strip()


def test_fusion_leaves_only_fused_kinds(compiled):
    kinds = {
        line.split("=")[1].split("(")[0].strip()
        for line in compiled.ir("fuse").splitlines()
        if " = " in line and "(" in line and not line.strip().startswith("const")
    }
    assert kinds <= {
        "embed",
        "attention_decode",
        "attention",
        "linear_residual",
        "gate_up_silu",
        "norm_linear",
        "sample",
    }


def test_attention_waits_only_for_the_qkv_rows_of_its_own_heads():
    cm = tc.compile("tiny-llama", nvcc=False)
    tasks = cm.schedule.program.tasks
    qkv_tasks = [t for t in tasks if t.op == "L0.qkv_proj"]
    att = next(t for t in tasks if t.kind == "attention_decode" and t.arg("head") == 1)
    deps = [tasks[d] for d in att.deps]
    assert {d.op for d in deps} == {"L0.qkv_proj"}
    # q heads 2-3 and kv head 1 live in 4 of the 8 QKV row blocks; it waits for those only.
    assert 0 < len(deps) < len(qkv_tasks)
    rows = set()
    for d in deps:
        rows |= set(range(d.arg("row0"), d.arg("row0") + d.arg("rows")))
    hd, heads, kv = 16, 4, 2
    needed = set(range(2 * hd, 4 * hd)) | set(range((heads + 1) * hd, (heads + 2) * hd))
    needed |= set(range((heads + kv + 1) * hd, (heads + kv + 2) * hd))
    assert needed <= rows


@pytest.mark.parametrize("flags", [False, True])
def test_every_split_of_attention_is_waited_for_by_the_o_projection(flags):
    cm = tc.compile("tiny-qwen3", nvcc=False, flags=flags)
    tasks = cm.schedule.program.tasks
    splits = {t.id for t in tasks if t.op == "L0.attention"}
    o_proj = next(t for t in tasks if t.op == "L0.o_proj")
    waited = {x.id for c, _ in o_proj.waits for x in tasks if x.signal == c}
    # the combine may be done by any split (with flags: polled, so every split is a dep)
    assert splits <= (set(o_proj.deps) if flags else waited)


# Each switch, and what must show in the generated source when it is set.
OPTION_EFFECTS = [
    ({"weight_ring": False}, lambda src: "kRing = false;" in src),
    ({"profile": True}, lambda src: "kProfile = true;" in src),
    ({"profile": True, "weight_ring": False}, lambda src: "kProfile = true;" in src),
    ({"cache_prefetch": False}, lambda src: "kCachePrefetch = false;" in src),
    (
        {"in_flight_kb": 0},
        lambda src: (
            re.search(r"kStages = (\d+);", src)[1] == re.search(r"kInFlight = (\d+);", src)[1]
        ),
    ),
    (
        {"stage_kb": 8, "in_flight_kb": 8},
        lambda src: "kStageBytes = 8192;" in src and "kInFlight = 1;" in src,
    ),
    ({"attn_splits": 3}, lambda src: re.search(r"task_attention_decode<(\d+, ){5}3, ", src)),
    ({"ring_stages": 3}, lambda src: "kStages = 3;" in src),
    ({"fault_skip_task": 0}, lambda src: "kFaultSkipTask = 0;" in src),
    ({"flags": False}, lambda src: "kFlags = false;" in src),
    ({"quantize": "fp8", "fp8_gemv": "mma"}, lambda src: "kFp8Mma = true;" in src),
]


@pytest.mark.parametrize("options,effect", OPTION_EFFECTS)
def test_every_option_compiles_clean_and_shows_in_the_kernel(options, effect):
    """Each switch of the ablation table (and the debug builds) emits warning-free code
    that differs from the default build where it should."""
    default = tc.compile("tiny-qwen3", nvcc=False).source
    cm = tc.compile("tiny-qwen3", **options)  # nvcc refuses to finish on any warning
    assert cm.resources.spill_stores == 0 and cm.resources.spill_loads == 0
    assert effect(cm.source)
    assert cm.source != default


@pytest.mark.parametrize(
    "option, value",
    [("l2_prefetch", True), ("l2_window_kb", 96), ("mma_gemv", True), ("fine_deps", False)],
)
def test_a_retired_option_is_one_line_naming_it(option, value, monkeypatch):
    """The options measured as losers are gone: setting one is a ConfigError naming it and
    the last commit that had it; at the behaviour kept (what old dumps record) it is
    accepted and changes nothing."""
    from tilert_compiler.models.config import ConfigError
    from tilert_compiler.options import LAST_COMMIT_WITH_RETIRED, RETIRED, from_env

    with pytest.raises(ConfigError, match=f"option {option} was removed") as e:
        tc.compile("tiny-llama", nvcc=False, **{option: value})
    assert LAST_COMMIT_WITH_RETIRED in str(e.value) and "\n" not in str(e.value)
    kept = tc.compile("tiny-llama", nvcc=False, **{option: RETIRED[option][0]})
    assert kept.source == tc.compile("tiny-llama", nvcc=False).source
    assert option not in kept.manifest["options"]
    var = {"l2_prefetch": "TILERT_L2_PREFETCH", "mma_gemv": "TILERT_MMA_GEMV"}.get(option)
    if var:
        monkeypatch.setenv(var, "1")
        with pytest.raises(ConfigError, match=f"{var}: option {option} was removed"):
            from_env()
        monkeypatch.setenv(var, "0")
        assert from_env() == tc.Options()


def test_profile_buffer_stride_matches_the_runtime():
    from tilert_compiler.ir.tasktable import PROFILE_WORDS

    src = tc.compile("tiny-llama", profile=True, nvcc=False).source
    assert f"kProfileWords = {PROFILE_WORDS};" in src


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
def test_the_handoff_term_moves_predictions_not_placement(name):
    from dataclasses import replace

    from tilert_compiler.passes.schedule import schedule

    cm = tc.compile(name, nvcc=False)
    target = cm.config.target
    without = schedule(cm.schedule.program, replace(target, handoff_s=0.0))
    assert without.sm_lists == cm.schedule.sm_lists
    step = max(e for _, e in cm.schedule.predicted)
    assert step > max(e for _, e in without.predicted) + target.handoff_s  # a chain of hops


def test_the_cache_prefetch_is_on_by_default_and_only_with_the_ring():
    """The producer asks L2 for attention's cache rows: the option reaches the schedule
    (and its dump) and the kernel, and needs the producer, so not without the ring."""
    on = tc.compile("tiny-qwen3", nvcc=False)
    assert dict(on.schedule.options)["cache_prefetch"] is True
    assert "kCachePrefetch = true;" in on.source and "prefetch_cache_rows<" in on.source
    off = tc.compile("tiny-qwen3", nvcc=False, cache_prefetch=False)
    assert dict(off.schedule.options)["cache_prefetch"] is False
    no_ring = tc.compile("tiny-qwen3", nvcc=False, weight_ring=False)
    assert dict(no_ring.schedule.options)["cache_prefetch"] is False
    assert "kCachePrefetch = false;" in no_ring.source


def test_copies_in_flight_come_from_the_target_in_bytes_and_stages_hold_a_row():
    """The producer's cap on copies in flight is the target's bytes over the stage size
    (at least one copy, at most the ring's depth); a stage smaller than a weight row, or
    an option out of range, is refused with one line naming it."""
    from tilert_compiler.models.config import ConfigError
    from tilert_compiler.passes.plan import PlanError

    def ring(**kw):
        return tc.compile("tiny-llama", nvcc=False, **kw).manifest["weight_ring"]

    # (tiny-llama's ring is 2 stages deep by default: half a layer per SM is a few bytes)
    for stage_kb, in_flight_kb, copies in ((16, 64, 4), (32, 64, 2), (64, 64, 1), (32, 8, 1)):
        r = ring(
            stage_kb=stage_kb, in_flight_kb=in_flight_kb, ring_stages=3 if stage_kb > 32 else 4
        )
        assert r["stage_bytes"] == stage_kb * 1024 and r["in_flight"] == copies
    target = tc.load_config("tiny-llama").target
    assert ring()["in_flight"] == max(1, target.copies_in_flight_bytes // ring()["stage_bytes"])
    whole = ring(in_flight_kb=0, ring_stages=4)
    assert whole["in_flight"] == whole["stages"] > 2
    with pytest.raises(PlanError, match="cannot hold a weight row of K = 8192"):
        tc.compile("llama-3.2-1b", nvcc=False, stage_kb=8)
    with pytest.raises(ConfigError, match="stage_kb must be 1..128"):
        tc.compile("tiny-llama", nvcc=False, stage_kb=0)
    with pytest.raises(ConfigError, match="in_flight_kb must be 0 or more"):
        tc.compile("tiny-llama", nvcc=False, in_flight_kb=-1)


def test_with_flags_only_the_sample_task_waits_on_a_counter():
    """Polling kinds order their reads by the data's parity: no counter waits, and their
    producers signal none; the sample task still waits on the LM head's counter and the
    step gate on the sample task's."""
    from tilert_compiler.ir.graph import OpKind
    from tilert_compiler.ir.kinds import KINDS

    cm = tc.compile("tiny-qwen3", nvcc=False, flags=True)
    tasks = cm.schedule.program.tasks
    assert dict(cm.schedule.program.consts)["flags"] == 1
    waiting = {t.kind for t in tasks if t.waits}
    assert waiting == {OpKind.SAMPLE}
    assert all(not t.waits and t.deps for t in tasks if KINDS[t.kind].polls)
    lm_head = {d for t in tasks if t.kind == OpKind.SAMPLE for d in t.deps}
    signalling = {t.id for t in tasks if t.signal >= 0}
    sample = {t.id for t in tasks if t.kind == OpKind.SAMPLE}
    assert signalling == lm_head | sample
    verify_schedule(cm.schedule)


def test_verify_counts_polled_inputs_as_ordering_and_catches_a_missing_one():
    from dataclasses import replace

    from tilert_compiler.ir.kinds import KINDS
    from tilert_compiler.ir.verify import VerifyError

    sched = tc.compile("tiny-llama", nvcc=False, flags=True).schedule
    verify_schedule(sched)  # the reads of polling tasks are ordered by their deps alone
    prog = sched.program
    victim = next(t for t in prog.tasks if KINDS[t.kind].polls and t.layer == 1)
    tasks = list(prog.tasks)
    tasks[victim.id] = replace(victim, deps=())
    with pytest.raises(VerifyError, match=f"t{victim.id} reads"):
        verify_schedule(replace(sched, program=prog.with_tasks(tasks)))


def test_ring_consumers_rely_on_each_stream_entry_holding_the_tasks_rows():
    """The ring's consumers chunk a task's weights from its rows argument, not the stream
    table: a table where an entry holds other rows must be refused, not miscompiled."""
    from dataclasses import replace

    from tilert_compiler.codegen.cuda import CodegenError, emit_cuda
    from tilert_compiler.ir.tasktable import F_NSTREAM, F_STREAM

    cm = tc.compile("tiny-llama", nvcc=False)
    table, plan = cm.table, cm.schedule.plan
    emit_cuda(cm.schedule, table, plan, [1.0] * 8, version="t", arch="sm_90a")  # as built
    t = int(np.flatnonzero(table.records[:, F_NSTREAM] > 0)[0])
    stream = table.stream.copy()
    stream[table.records[t, F_STREAM], 1] -= stream[table.records[t, F_STREAM], 2]  # a row less
    with pytest.raises(CodegenError, match=f"task {t} "):
        emit_cuda(
            cm.schedule, replace(table, stream=stream), plan, [1.0] * 8, version="t", arch="sm_90a"
        )


def test_attention_scratch_does_not_grow_with_max_seq_len_and_ring_stages_are_a_cap():
    """Decode attention holds a block of a split's cache rows, not all of them: its shared
    memory, and so the room for the weight ring, is the same at any max_seq_len.
    ring_stages sets the depth and refuses more stages than fit."""
    from tilert_compiler.ir.kinds import KINDS
    from tilert_compiler.ir.tasktable import Variant
    from tilert_compiler.passes.plan import PlanError

    def attention(cap):
        return Variant(
            "attention_decode",
            (("HD", 128), ("G", 2), ("H", 16), ("KV", 8), ("S", cap), ("NSPLIT", 16), ("QKN", 1)),
        )

    scratch = KINDS["attention_decode"].scratch
    small, big = (scratch(attention(c), 7, 32768) for c in (64, 1024))
    assert small < big == scratch(attention(65536), 7, 32768)
    assert tc.compile("tiny-llama", nvcc=False, ring_stages=3).schedule.plan.stages == 3
    with pytest.raises(PlanError, match="stages of 32768 bytes fit"):
        tc.compile("tiny-llama", nvcc=False, ring_stages=1000)


def test_the_ring_holds_half_a_layer_per_sm_or_all_that_fits():
    """The decode ring's depth: the stages that fit beside the task scratch, but no more
    than half a decoder layer's weights per SM, rounded up to a stage (at least 2). With 4
    KiB stages, tiny-llama on 132 SMs streams a few hundred bytes a layer per SM: 2 stages;
    on 2 SMs, 36 KiB: 5 stages (18 KiB)."""
    from tilert_compiler.passes.plan import layer_bytes_per_sm

    depth = {}
    for sms in (132, 2):
        over = {"target": {"sms": sms}}
        cm = tc.compile("tiny-llama", nvcc=False, overrides=over, stage_kb=4)
        plan = cm.schedule.plan
        half = layer_bytes_per_sm(cm.table, sms) / 2
        assert plan.stages == 2 or (plan.stages - 1) * plan.stage_bytes < half  # no more
        assert plan.stages * plan.stage_bytes >= half  # half a layer, or all that fits
        depth[sms] = plan.stages
    assert depth == {132: 2, 2: 5}
