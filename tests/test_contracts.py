"""The kernel and the runtime read the same definitions: the launch parameters
(ir/tasktable.py PARAMS: the kernel's struct Params, the runtime's ctypes mirror), the task
record's fields (RECORD_FIELDS: the kernel's F_* enum) and the task kinds (ir/kinds.py: the
device functions, the interpreter's methods)."""

import ctypes
import re

import pytest

import tilert_compiler as tc
from tilert_compiler.codegen.cuda import HEADERS
from tilert_compiler.codegen.nvcc import compile_cubin, find_nvcc
from tilert_compiler.ir import tasktable as tt
from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.runtime.gpu import _Params
from tilert_compiler.runtime.interpreter import Interpreter

needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed")


@pytest.fixture(scope="module")
def source() -> str:
    return tc.compile("tiny-llama", nvcc=False, prefill_chunk=0).source


def test_the_runtime_params_are_params_in_order():
    assert [name for name, _ in _Params._fields_] == [p.name for p in tt.PARAMS]


@needs_nvcc
def test_the_kernel_params_have_the_runtime_layout(source):
    """static_asserts of every field's offset and of the size, as ctypes lays them out,
    compiled after the kernel's Params."""
    prelude = source.split("\n// ---- codegen/cuda/")[0]
    checks = [
        f"static_assert(offsetof(tilert::Params, {name}) == {getattr(_Params, name).offset});"
        for name, _ in _Params._fields_
    ]
    checks.append(f"static_assert(sizeof(tilert::Params) == {ctypes.sizeof(_Params)});")
    driver = "\n".join([prelude, "#include <cstddef>", *checks, ""])
    _, _, warnings = compile_cubin(driver, "sm_90a", "")
    assert not warnings, warnings


def test_the_kernel_record_fields_are_the_tables(source):
    enum = re.search(r"enum RecordField : int \{ ([^}]*) \};", source)[1]
    fields = dict(f.split(" = ") for f in enum.split(", "))
    assert fields == {f"F_{name}": str(i) for i, name in enumerate(tt.RECORD_FIELDS)}
    for name, i in fields.items():
        assert getattr(tt, name) == int(i)
    assert f"kArg0 = {tt.F_ARG0};" in source and f"kRecord = {tt.RECORD};" in source


def test_the_sample_modes_are_the_runtimes(source):
    assert (
        f"kLogitsOnly = {tt.MODE_LOGITS}, kGreedy = {tt.MODE_GREEDY}, "
        f"kSampled = {tt.MODE_SAMPLED};" in source
    )


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_each_task_kind_record_names_code_that_exists(kind):
    """A kind's record (ir/kinds.py) names a header whose device function takes the
    record's statics as its template parameters, and an interpreter method."""
    header = (HEADERS / kind.header).read_text()
    params = re.search(rf"template <([^>]*)>\s*__device__ void {kind.device}\(", header)
    assert params is not None, kind.header
    names = tuple(p.removeprefix("int ") for p in params[1].split(", "))
    # a GEMV's bf16 function leaves out QBK; its FP8 overload (tasks/fp8.cuh) has them all
    assert names == kind.statics[: len(names)]
    if "QBK" in kind.statics:
        fp8 = (HEADERS / "tasks/fp8.cuh").read_text()
        assert re.search(
            rf"template <int {', int '.join(kind.statics)}>\s*__device__ void {kind.device}\(", fp8
        )
    assert callable(getattr(Interpreter, kind.interpreter))
