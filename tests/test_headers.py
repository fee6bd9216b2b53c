"""The kernel's device code (codegen/cuda/) is plain C++: each header compiles alone after
the build's constants and Params (what the generated kernel.cu puts before its includes),
and the kernel source an artifact keeps is those constants, the dispatch and the headers'
text, inlined once each."""

import re
from pathlib import Path

import pytest

import tilert_compiler as tc
from tilert_compiler.codegen.cuda import FP8_HEADER, HEADERS, args_struct, include_flags
from tilert_compiler.codegen.nvcc import NvccError, compile_cubin, find_nvcc
from tilert_compiler.ir.kinds import KINDS

needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed")

ALL = sorted(p.relative_to(HEADERS).as_posix() for p in HEADERS.rglob("*.cuh"))
MARK = "// ---- codegen/cuda/"


# The FP8 GEMVs' headers: in the kernel source of FP8 builds only (bf16's is unchanged).
FP8_ONLY = ("gemv_fp8.cuh", FP8_HEADER)


@pytest.fixture(scope="module")
def source() -> str:
    """tiny-qwen3's kernel source (every task kind, q/k norm), without nvcc."""
    return tc.compile("tiny-qwen3", nvcc=False, prefill_chunk=0).source


@pytest.fixture(scope="module")
def fp8_source() -> str:
    """The same with FP8 projections (the GEMV kinds' FP8 overloads)."""
    return tc.compile("tiny-qwen3", nvcc=False, quantize="fp8").source


def _fp8_calls(source: str) -> list[str]:
    """The dispatch's calls of the FP8 overloads: a GEMV kind with all its statics."""
    calls = []
    for kind in [name for name, k in KINDS.items() if k.streams]:
        n = len(KINDS[kind].statics)
        for m in re.finditer(rf"task_{kind}<([^>]*)>\(p, st, args_of<\w+>", source):
            if len(m[1].split(", ")) == n:
                calls.append(m[0])
                break
    return calls


def _driver(source: str, header: str) -> str:
    """The build's constants and Params, the header, and a kernel that instantiates what
    it defines: a task kind's function with this build's statics, or the task loop with
    a dispatch that knows no kind."""
    prelude = source.split("\n" + MARK)[0]
    out = [prelude, f'#include "{header}"', "namespace tilert {"]
    if header.startswith("tasks/"):
        if header == FP8_HEADER:
            calls = _fp8_calls(source)
            assert len(calls) == 3, calls
        else:
            calls = [re.search(rf"task_{Path(header).stem}<[^>]*>\(p, st, args_of<\w+>", source)[0]]
        out += [
            "__global__ void check(const Params p) {",
            "  extern __shared__ float smem[];",
            "  __shared__ float red[32];",
            "  Ring ring{};",
            "  const Step st{0, p.pos, p.token, p.epoch};",
            "  const long long* rec = p.tasks;",
            *(f"  {call}(rec), p.tasks, 0, smem, red, ring);" for call in calls),
            "}",
        ]
    elif header == "persistent.cuh":
        out += [
            "struct NoKinds {",
            "  static __device__ bool run(const Params&, const Step&, const long long*, int,",
            "                             float*, float*, Ring&) { return false; }",
            "  static __device__ void cache_inputs(const Params&, int, const long long*) {}",
            "};",
            "__global__ void check(const Params p) { persistent_kernel<NoKinds>(p); }",
        ]
    return "\n".join([*out, "}  // namespace tilert", ""])


@needs_nvcc
@pytest.mark.parametrize("header", ALL)
def test_each_header_compiles_alone_without_warnings(source, fp8_source, header):
    src = fp8_source if header in FP8_ONLY else source
    _, _, warnings = compile_cubin(_driver(src, header), "sm_90a", "", extra=include_flags())
    assert not warnings, warnings


def test_the_kernel_source_inlines_every_header_once(source, fp8_source):
    assert '#include "' not in source
    for header in ALL:
        assert source.count(f"{MARK}{header}\n") == (header not in FP8_ONLY), header
        assert fp8_source.count(f"{MARK}{header}\n") == 1, header


def test_the_generated_part_is_constants_params_and_dispatch(source):
    """Without the headers' text the kernel source is the build's constants, Params, the
    dispatch and the entry point: no task code."""
    generated, depth = [], 0
    for line in source.splitlines():
        if line.startswith(MARK):
            depth += -1 if line.endswith(" ends") else 0 if line.endswith(": above") else 1
        elif depth == 0:
            generated.append(line)
    text = "\n".join(generated)
    assert "struct Params {" in text and "struct Tasks {" in text and "__global__" in text
    assert "task_embed<" in text and "__device__ void task_" not in text
    assert len(generated) < 200


def test_task_arguments_are_named_structs_of_the_task_tables_args(source):
    """Each kind's arguments are a struct whose fields are its record's args in order, and the
    device code reads them by name, never as a[i]."""
    for kind, k in KINDS.items():
        fields = re.search(rf"struct {args_struct(kind)} {{\n  long long ([^;]*);", source)
        assert fields is not None and fields[1].split(", ") == list(k.args), kind
    for header in ALL:
        assert not re.search(r"\ba\[\d", (HEADERS / header).read_text()), header


def test_codegen_files_stay_small():
    """No file under codegen/ over 500 lines, no template over 200."""
    root = HEADERS.parent
    for f in root.rglob("*"):
        if f.is_file() and f.suffix in (".py", ".cuh", ".j2", ".md"):
            n = len(f.read_text().splitlines())
            assert n <= (200 if f.suffix == ".j2" else 500), (f, n)


@needs_nvcc
@pytest.mark.parametrize("header", ["tasks/attention_decode.cuh", "tasks/norm_linear.cuh"])
def test_a_task_that_outgrows_the_scratch_does_not_compile(source, header):
    """The shared memory a task carves out is asserted against codegen's scratch_floats."""
    small = re.sub(r"kScratchFloats = \d+;", "kScratchFloats = 16;", _driver(source, header))
    with pytest.raises(NvccError, match="scratch_floats"):
        compile_cubin(small, "sm_90a", "", extra=include_flags())
