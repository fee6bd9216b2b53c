"""PrefillProgram -> one CUDA source, its cubin, and a launch spec per kernel.

The GEMMs and the attention are TileLang tile programs (codegen/tile_programs.py),
lowered for the target without a GPU; the row-wise kernels are the templates of
templates/prefill_ops.cuh. All of them go into one `prefill.cu`, compiled by one nvcc
call. Each kernel's spec says how to launch it: its parameters in order (a pointer, a
TMA descriptor, whose fields TileLang's host code would have encoded, or an int), block,
grid (the row axis scaled by the chunk's tokens at launch) and dynamic shared memory. The
runtime encodes the descriptors once per bound tensor (runtime/prefill.py).
"""

from __future__ import annotations

import copy
import functools
import re
import time
from pathlib import Path

from tilert_compiler.ir.prefill import Kernel, PrefillProgram

TEMPLATES = Path(__file__).parent / "templates"
OPS_THREADS = 256

# The row-wise kernels' parameters, in order: (name, C type). Pointers only, but eps.
OPS_PARAMS = {
    "embed": [
        ("tokens", "const int*"),
        ("table", "const __nv_bfloat16*"),
        ("x", "float*"),
        ("meta", "const int*"),
    ],
    "add_norm": [
        ("x", "float*"),
        ("y", "const float*"),
        ("w", "const __nv_bfloat16*"),
        ("out", "__nv_bfloat16*"),
        ("meta", "const int*"),
    ],
    "qk_cache": [
        ("qkv", "const float*"),
        ("qn", "const __nv_bfloat16*"),
        ("kn", "const __nv_bfloat16*"),
        ("q", "__nv_bfloat16*"),
        ("kc", "float*"),
        ("vc", "float*"),
        ("inv_freq", "const float*"),
        ("meta", "const int*"),
    ],
}


class PrefillCodegenError(RuntimeError):
    pass


def tilelang_include_dirs() -> list[str]:
    import tilelang

    root = Path(tilelang.__file__).parent
    return [str(root / "src"), str(root / "3rdparty" / "cutlass" / "include")]


def _ops_call(k: Kernel) -> str:
    st = dict(k.statics)
    args = ", ".join(n for n, _ in OPS_PARAMS[k.kind])
    if k.kind == "embed":
        return f"tilert::prefill::embed<{st['D']}>({args});"
    if k.kind == "add_norm":
        return f"tilert::prefill::add_norm<{st['D']}>({args}, {float(st['eps'])!r}f);"
    qkn = "true" if st["QK_NORM"] else "false"
    tmpl = f"{st['H']}, {st['KV']}, {st['HD']}, {st['S']}, {qkn}"
    return f"tilert::prefill::qk_cache<{tmpl}>({args}, {float(st['eps'])!r}f);"


def _ops_kernel(k: Kernel) -> tuple[str, dict]:
    params = ", ".join(f"{t} {n}" for n, t in OPS_PARAMS[k.kind])
    src = (
        f'extern "C" __global__ void __launch_bounds__({OPS_THREADS}) {k.name}({params}) {{\n'
        f"  {_ops_call(k)}\n}}\n"
    )
    spec = {
        "symbol": k.name,
        "params": [{"name": n, "kind": "ptr"} for n, _ in OPS_PARAMS[k.kind]],
        "block": [OPS_THREADS, 1, 1],
        "grid": [k.get("M"), 1, 1],
        "row_axis": 0,
        "row_tile": k.row_tile,
        "row_blocks": k.row_tile,  # a block per row
        "smem": 0,
    }
    return src, spec


@functools.lru_cache(maxsize=64)
def _tile_kernel(k: Kernel, arch: str) -> tuple[str, list[str], dict, str]:
    """Lower one TileLang program; returns (kernel source without includes, includes, spec,
    the tile program as TileLang's TIR script).
    Kept per (kernel, arch) for the process: lowering takes a second or two and the same
    shapes recur (recompiles, tests)."""
    import tilelang
    from tilelang import tvm
    from tvm import target as tvm_target

    from tilert_compiler.codegen.tile_programs import PROGRAMS

    st = {a: v for a, v in k.statics}
    st["block_m"] = k.row_tile  # tokens a block takes: the launch's row tile
    func = PROGRAMS[k.kind](**st).with_attr("global_symbol", k.name)
    tgt = tvm_target.Target({"kind": "cuda", "arch": arch})
    with tgt:
        art = tilelang.lower(func, target=tgt)
    (gv, dev), *more = list(art.device_mod.functions.items())
    if more:
        raise PrefillCodegenError(f"{k.name}: TileLang made {1 + len(more)} kernels, expected 1")
    symbol = str(gv.name_hint)
    # The descriptors in the order the host passes them; two views of one tensor (an FP8
    # weight's values and scales) give two descriptors of the same name, in parameter order.
    descs: list[tuple[str, dict]] = [
        (str(var.name), _tma_spec(k.name, [*spec]))
        for var, spec in art.host_mod[k.name].attrs.get("tma_descriptor_args", {}).items()
    ]
    params = []
    for p in dev.params:
        name = str(p.name)
        at = next((i for i, (n, _) in enumerate(descs) if n == name), None)
        if at is not None:
            desc = descs.pop(at)[1]
            params.append({"name": desc["tensor"], "kind": "tmap", "tmap": desc})
        elif isinstance(p.type_annotation, tvm.ir.PointerType) or "handle" in str(p.dtype):
            params.append({"name": name, "kind": "ptr"})
        else:
            params.append({"name": name, "kind": "i32"})
    ext = dev.attrs["thread_extent"]
    spec = {
        "symbol": symbol,
        "params": params,
        "block": [int(ext.get(f"threadIdx.{a}", 1)) for a in "xyz"],
        "grid": [int(ext.get(f"blockIdx.{a}", 1)) for a in "xyz"],
        "row_axis": 1 if k.kind in ("gemm", "gemm_silu") else 0,
        "row_tile": k.row_tile,
        "row_blocks": 1,
        "smem": int(dev.attrs.get("dyn_shared_memory_buf", 0)),
    }
    src = art.kernel_source
    includes = [ln for ln in src.splitlines() if ln.startswith("#include <tl_templates")]
    body = src[src.index('extern "C"') :]
    return body, includes, spec, func.script()


def _tma_spec(kernel: str, a: list) -> dict:
    """TileLang's `__tvm_tensormap_create_tiled` arguments as a descriptor spec:
    (name, desc, dtype, rank, tensor, dims[rank], strides[rank] (the first is the element
    size), box[rank], element strides[rank], interleave, swizzle, l2 promotion, oob fill)."""
    rank = int(a[3])
    ints = [int(x) for x in a[5:]]
    if len(ints) != 4 * rank + 4:
        raise PrefillCodegenError(f"{kernel}: unexpected TMA descriptor arguments {a}")
    dims, strides, box, elem = (ints[i * rank : (i + 1) * rank] for i in range(4))
    interleave, swizzle, l2, oob = ints[4 * rank :]
    return {
        "tensor": str(a[4].name),
        "dtype": int(a[2]),
        "dims": dims,
        "strides": strides[1:],  # bytes, dims 1.. (the driver's globalStrides)
        "box": box,
        "elem_strides": elem,
        "interleave": interleave,
        "swizzle": swizzle,
        "l2_promotion": l2,
        "oob_fill": oob,
    }


def lower_prefill(prog: PrefillProgram, arch: str, say=lambda _m: None) -> tuple[str, dict, dict]:
    """(CUDA source, {kernel name: launch spec}, {tile program name: its TIR script})."""
    try:
        import tilelang  # noqa: F401
    except ImportError:
        from tilert_compiler.passes.prefill import PrefillPlanError

        raise PrefillPlanError(
            "the prefill program's kernels are TileLang tile programs and tilelang is not "
            "installed (pip install tilelang==0.1.15)"
        ) from None
    includes: list[str] = []
    bodies: list[str] = []
    specs: dict[str, dict] = {}
    scripts: dict[str, str] = {}
    for k in prog.kernels:
        t0 = time.perf_counter()
        if k.kind in OPS_PARAMS:
            body, spec = _ops_kernel(k)
        else:
            body, inc, spec, scripts[k.name] = _tile_kernel(k, arch)
            spec = copy.deepcopy(spec)
            includes += [i for i in inc if i not in includes]
        bodies.append(f"// ---- {k.name}: {k.kind}\n{body}")
        specs[k.name] = spec
        say(f"  prefill   {k.name:<10} {(time.perf_counter() - t0) * 1e3:8.1f} ms")
    head = [
        "// The prefill program's kernels: TileLang tile programs and prefill_ops.cuh.",
        "// Generated by tilert-compiler (codegen/prefill.py); do not edit.",
        *includes,
        "#ifdef ENABLE_BF16",
        "#include <tl_templates/cuda/cuda_bf16_fallbacks.cuh>",
        "#endif",
        '#include "prefill_ops.cuh"',
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(bodies), specs, scripts


_PTXAS_FN = re.compile(r"Compiling entry function '(\w+)'")


def kernel_resources(log: str) -> dict[str, dict]:
    """ptxas's report per kernel: registers, spill bytes, static shared memory."""
    out: dict[str, dict] = {}
    cur = None
    for line in log.splitlines():
        m = _PTXAS_FN.search(line)
        if m:
            cur = out.setdefault(m.group(1), {})
            continue
        if cur is None:
            continue
        if (r := re.search(r"Used (\d+) registers", line)) is not None:
            cur["registers"] = int(r.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["static_smem"] = int(s.group(1)) if s else 0
        if (r := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)) is not None:
            cur["spill_stores"], cur["spill_loads"] = int(r.group(1)), int(r.group(2))
    return out


def nvcc_flags() -> list[str]:
    # 20012: TileLang's own headers default constructors with __host__ __device__, which
    # nvcc 13 reports from system headers too; no code of ours has such a constructor.
    return ["-DENABLE_BF16", "-diag-suppress", "20012", f"-I{TEMPLATES}"] + [
        a for d in tilelang_include_dirs() for a in ("-isystem", d)
    ]
