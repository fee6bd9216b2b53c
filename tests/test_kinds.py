"""A new task kind is one record (ir/kinds.py), one header (codegen/cuda/tasks/<kind>.cuh)
and one interpreter method (runtime/interpreter.py Interpreter._<kind>): no other module
of the compiler or the runtime names a kind, and a kind registered through its record
alone runs through every stage."""

import ast
import io
import tokenize
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.ir.graph import OpKind
from tilert_compiler.ir.kinds import KINDS, LINEAR_RESIDUAL, Rewrite, TaskKind
from tilert_compiler.models import random_weights
from tilert_compiler.models.reference import hf_model, reference_logits
from tilert_compiler.runtime.interpreter import Interpreter

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "ir", "passes", "codegen", "compiler", "runtime")
# Where a kind's name may appear as something else than the kind. `embed` and `sample` are
# primitive ops too (what a model emits: ir/graph.py OpKind, the op names of
# models/graph.py), and `embed` is also a kernel kind of the prefill program, which has
# its own registry (ir/prefill.py KINDS).
NOT_THE_TASK_KIND = {
    "embed": {
        "ir/graph.py",
        "models/graph.py",
        "ir/prefill.py",
        "passes/prefill.py",
        "codegen/prefill.py",
        "compiler/explain.py",
    },
    "sample": {"ir/graph.py", "models/graph.py"},
}


def _mentions(path: Path, name: str) -> list[int]:
    """Lines of `path` with the string literal `name` or the identifier `NAME`: a
    dispatch on the kind. (Its interpreter method `_name` is neither.)"""
    text = path.read_text()
    if path.suffix == ".j2":
        return [i for i, line in enumerate(text.splitlines(), 1) if f'"{name}"' in line]
    lines = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and tok.string == name.upper():
            lines.append(tok.start[0])
        elif tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):  # f-strings
                continue
            if value == name:
                lines.append(tok.start[0])
    return lines


@pytest.mark.parametrize("name", list(KINDS))
def test_no_module_but_the_kinds_record_names_a_kind(name):
    allowed = {"ir/kinds.py"} | NOT_THE_TASK_KIND.get(name, set())
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.suffix in (".py", ".j2") and rel not in allowed:
                if lines := _mentions(path, name):
                    found[rel] = lines
    assert not found, f"{name} named outside its record (ir/kinds.py): {found}"


@dataclass(frozen=True)
class _ToyKind(TaskKind):
    """A kind without a header of its own: it borrows linear_residual's device code (the
    test compiles no CUDA)."""

    @property
    def header(self) -> str:
        return LINEAR_RESIDUAL.header

    @property
    def device(self) -> str:
        return LINEAR_RESIDUAL.device


def _as_toy(uses, op) -> Rewrite | None:
    """linear_residual's pattern, making toy_residual ops."""
    hit = LINEAR_RESIDUAL.fuses[1](uses, op)
    if hit is None:
        return None
    return replace(hit, ops=tuple(replace(o, kind="toy_residual") for o in hit.ops))


def test_a_kind_registered_by_its_record_alone_runs_through_every_stage(monkeypatch):
    """toy_residual: linear_residual's rules under another name, registered in KINDS with
    an interpreter method and nothing else. The o-proj and down-proj become its tasks,
    serialize into its own variant and argument struct, and the interpreter runs them to
    transformers' logits."""
    toy = _ToyKind(
        **vars(LINEAR_RESIDUAL) | {"name": "toy_residual", "fuses": (OpKind.LINEAR, _as_toy)}
    )
    monkeypatch.setitem(KINDS, "linear_residual", replace(LINEAR_RESIDUAL, fuses=None))
    monkeypatch.setitem(KINDS, "toy_residual", toy)
    monkeypatch.setattr(Interpreter, "_toy_residual", Interpreter._linear_residual, raising=False)

    cm = tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)
    kinds = {t.kind for t in cm.schedule.program.tasks}
    assert "toy_residual" in kinds and "linear_residual" not in kinds
    assert {v.kind for v in cm.table.variants} == kinds
    assert "struct ToyResidualArgs {" in cm.source
    weights = random_weights(cm.config, seed=int(torch.randint(0, 2**31 - 1, ())))
    tokens = torch.randint(0, cm.config.vocab, (4,))
    ours = cm.interpret(tokens.tolist(), weights=weights)
    ref = reference_logits(hf_model(cm.config, weights), tokens)
    assert ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max() <= 1e-4
