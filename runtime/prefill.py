"""The prefill program at run time: the GPU launcher and the reference that defines it.

An artifact's `prefill.json` (codegen/prefill.py) lists the program's scratch buffers, its
kernels with their launch specs, and the launches of one chunk. Both classes here walk
that list the same way, binding each argument to a place:
- `buf:<name>`: a scratch buffer (a row per chunk token; nothing grows with max_seq_len),
- `w:<tensor>`: the weights arena from that tensor's offset (fused matrices span the
  tensors that follow it), `act:<tensor>`: the act arena (the KV cache),
- `rt:meta` (pos, n, first token, 0 as int32), `rt:tokens`, `rt:inv_freq`, or `none`.

`PrefillReference` runs each kernel kind as torch code on any device: with `bf16=True`
it rounds where the kernels round (a GEMM's bf16 operands, P in attention), without it
everything stays float32, which checks the program itself against transformers to 1e-4.
A GEMM whose statics have QBK reads FP8 rows (e4m3 values, then scales) from a weights
arena of raw 2-byte units, as an FP8 build packs it.
`GpuPrefill` launches the cubin's kernels; TMA descriptors are encoded once per bound
tensor at load, so a chunk is a fixed list of launches.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Sequence

import torch

from tilert_compiler.ir.precision import scale_cols
from tilert_compiler.ir.prefill import RUNTIME_BUFFERS
from tilert_compiler.runtime.cuda_driver import checked

META_WORDS = 4  # pos, n, index of the chunk's first token, unused
# Chunks are launched for a multiple of this many tokens (every kernel's row tile divides
# it, and tokens past n are left alone by each kernel), so one CUDA graph serves each multiple.
GRAPH_TOKENS = 128

_DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


class PrefillError(ValueError):
    pass


# The prefill program's files in an artifact folder (written beside the decode kernel's).
SPEC_FILE, SOURCE_FILE, CUBIN_FILE = "prefill.json", "prefill.cu", "prefill.cubin"


def read_spec(text: str, manifest: dict) -> dict:
    """prefill.json, checked against the artifact's manifest before anything runs: every
    launch names a kernel of the spec, binds every parameter of it, and every place it
    binds exists (a buffer, a runtime buffer, or a manifest tensor in the right arena)."""
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise PrefillError(f"not JSON ({e})") from None
    for key in ("chunk", "buffers", "kernels", "launches", "consts"):
        if key not in spec:
            raise PrefillError(f"missing '{key}'")
    chunk = spec["chunk"]
    if not isinstance(chunk, int) or chunk <= 0 or chunk % 128:
        raise PrefillError(f"chunk {chunk!r} is not a positive multiple of 128")
    cfg = manifest["config"]
    if spec["consts"].get("max_seq_len") != cfg["max_seq_len"]:
        raise PrefillError(
            f"built for max_seq_len {spec['consts'].get('max_seq_len')}, the decode program "
            f"has {cfg['max_seq_len']}: not this model's prefill program; recompile"
        )
    arenas = {t["name"]: t["arena"] for t in manifest["tensors"]}
    buffers = {b["name"] for b in spec["buffers"]}
    for la in spec["launches"]:
        k = spec["kernels"].get(la.get("kernel"))
        if k is None:
            raise PrefillError(f"a launch names kernel {la.get('kernel')!r}, which it lacks")
        for p in k.get("params", []):
            place = la["args"].get(p["name"])
            kind, _, name = (place or "").partition(":")
            ok = (
                place == "none"
                or (kind == "buf" and name in buffers)
                or (kind == "rt" and name in RUNTIME_BUFFERS)
                or (kind == "w" and arenas.get(name) == "weights")
                or (kind == "act" and arenas.get(name) == "act")
            )
            if not ok:
                raise PrefillError(
                    f"{la['kernel']} (layer {la.get('layer')}) binds {p['name']} to {place!r}, "
                    "which is not a buffer, a runtime buffer or a tensor of the manifest"
                )
    return spec


def check_prompt(n_tokens: int, pos: int, max_seq_len: int) -> None:
    """A prompt that fits what is left of the cache: said before any launch."""
    if n_tokens < 1:
        raise PrefillError("the prompt is empty: give at least one token")
    if pos < 0 or pos + n_tokens > max_seq_len:
        raise PrefillError(
            f"a prompt of {n_tokens} tokens at position {pos} does not fit the KV cache "
            f"(max_seq_len {max_seq_len}): shorten it or recompile with a larger --max-seq-len"
        )


class _Places:
    """Argument places -> tensors over the arenas and the program's buffers."""

    def __init__(self, spec: dict, tensors: dict, w: torch.Tensor, act: torch.Tensor, rt: dict):
        self.spec, self.tensors, self.w, self.act, self.rt = spec, tensors, w, act, rt
        dev = act.device
        chunk = int(spec["chunk"])
        self.buffers = {
            b["name"]: torch.zeros((chunk, *b["shape"][1:]), dtype=_DTYPES[b["dtype"]], device=dev)
            for b in spec["buffers"]
        }

    def address(self, place: str) -> int:
        """Device address of a place (0 for `none`)."""
        if place == "none":
            return 0
        kind, name = place.split(":", 1)
        if kind == "buf":
            return self.buffers[name].data_ptr()
        if kind == "rt":
            return self.rt[name].data_ptr()
        t = self._tensor(name, kind)
        arena = self.w if kind == "w" else self.act
        return arena.data_ptr() + int(t["offset"]) * arena.element_size()

    def room(self, place: str) -> int:
        """Bytes from a place's address to the end of its buffer or arena."""
        kind, _, name = place.partition(":")
        if kind in ("buf", "rt"):
            t = self.buffers[name] if kind == "buf" else self.rt[name]
            return t.numel() * t.element_size()
        arena = self.w if kind == "w" else self.act
        return (arena.numel() - int(self._tensor(name, kind)["offset"])) * arena.element_size()

    def view(self, place: str, shape: Sequence[int] | None = None) -> torch.Tensor | None:
        """The place as a tensor (`shape` for arena places; default the tensor's own)."""
        if place == "none":
            return None
        kind, name = place.split(":", 1)
        if kind == "buf":
            return self.buffers[name]
        if kind == "rt":
            return self.rt[name]
        t = self._tensor(name, kind)
        shape = list(shape or t["shape"])
        arena = self.w if kind == "w" else self.act
        off = int(t["offset"])
        return arena[off : off + math.prod(shape)].view(*shape)

    def raw(self, place: str, nbytes: int) -> torch.Tensor:
        """`nbytes` bytes of the weights arena from a weight place's offset (uint8): an FP8
        weight's rows. The arena must hold raw 2-byte units (bf16), as an FP8 build's does."""
        kind, name = place.split(":", 1)
        if kind != "w" or self.w.element_size() != 2:
            raise PrefillError(
                f"{place}: FP8 rows are read from a weights arena of raw 2-byte units, not "
                f"{self.w.dtype}"
            )
        at = 2 * int(self._tensor(name, kind)["offset"])
        return self.w.view(torch.uint8)[at : at + nbytes]

    def _tensor(self, name: str, kind: str) -> dict:
        t = self.tensors.get(name)
        want = "weights" if kind == "w" else "act"
        if t is None or t["arena"] != want:
            raise PrefillError(f"prefill.json: no {want} tensor '{name}' in the manifest")
        return t


def read_fp8_rows(rows: torch.Tensor, k: int, qbk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 rows (uint8 [N, row bytes], ir/precision.py) as float32 (e4m3 values [N, K],
    scales [N, ceil(K / qbk)])."""
    g = scale_cols(k, qbk)
    q = rows[:, :k].contiguous().view(torch.float8_e4m3fn).float()
    return q, rows[:, k : k + 4 * g].contiguous().view(torch.float32)


def _chunks(n_tokens: int, chunk: int):
    for at in range(0, n_tokens, chunk):
        yield at, min(chunk, n_tokens - at)


class PrefillReference:
    """The prefill program in torch: the executable definition of each kernel kind."""

    def __init__(
        self, manifest: dict, spec: dict, w: torch.Tensor, act: torch.Tensor, *, bf16: bool = True
    ):
        self.spec, self.bf16 = spec, bf16
        dev = act.device
        rt = {
            "meta": torch.zeros(META_WORDS, dtype=torch.int32),
            "tokens": torch.zeros(int(manifest["config"]["max_seq_len"]), dtype=torch.int32),
            "inv_freq": torch.tensor(manifest["rope_inv_freq"], dtype=torch.float32, device=dev),
        }
        tensors = {t["name"]: t for t in manifest["tensors"]}
        self.places = _Places(spec, tensors, w, act, rt)
        self.max_seq_len = int(manifest["config"]["max_seq_len"])

    def _r(self, t: torch.Tensor) -> torch.Tensor:
        """What a bf16 store does to a value (nothing in float32 mode)."""
        return t.to(torch.bfloat16).float() if self.bf16 else t.float()

    def run(self, tokens: Sequence[int], pos: int) -> None:
        check_prompt(len(tokens), pos, self.max_seq_len)
        rt = self.places.rt
        rt["tokens"][: len(tokens)] = torch.tensor(list(tokens), dtype=torch.int32)
        for at, n in _chunks(len(tokens), int(self.spec["chunk"])):
            rt["meta"][:3] = torch.tensor([pos + at, n, at], dtype=torch.int32)
            for la in self.spec["launches"]:
                k = self.spec["kernels"][la["kernel"]]
                getattr(self, "_" + k["kind"])(k["statics"], la["args"], n)

    # ---------------------------------------------------------------- kernel kinds
    def _embed(self, st, a, n):
        first = int(self.places.rt["meta"][2])
        table = self.places.view(a["table"], (st["V"], st["D"]))
        ids = self.places.rt["tokens"][first : first + n].long().to(table.device)
        self.places.view(a["x"])[:n] = self._r(table[ids])

    def _add_norm(self, st, a, n):
        x = self.places.view(a["x"])
        if a["y"] != "none":
            x[:n] += self.places.view(a["y"])[:n]
        w = self.places.view(a["w"], (st["D"],)).float()
        xr = x[:n]
        inv = torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + st["eps"])
        self._out(a["out"], n, xr * inv * w)

    def _out(self, place: str, n: int, value: torch.Tensor) -> None:
        dst = self.places.view(place)
        if self.bf16 or dst.dtype != torch.bfloat16:
            dst[:n] = value.reshape(dst[:n].shape).to(dst.dtype)
        else:  # float32 mode: keep the value unrounded in a float32 twin of the buffer
            self._f32(place)[:n] = value.reshape(dst[:n].shape)

    def _in(self, place: str, n: int) -> torch.Tensor:
        if not self.bf16 and self.places.view(place).dtype == torch.bfloat16:
            return self._f32(place)[:n]
        return self.places.view(place)[:n].float()

    def _f32(self, place: str) -> torch.Tensor:
        twins = self.__dict__.setdefault("_twins", {})
        if place not in twins:
            b = self.places.view(place)
            twins[place] = torch.zeros(b.shape, dtype=torch.float32, device=b.device)
        return twins[place]

    def _weight(self, place: str, rows: int, cols: int) -> torch.Tensor:
        # the GPU's arena holds bf16; the interpreter's float32 (bf16 values, as loaded)
        return self._r(self.places.view(place, (rows, cols)))

    def _times(self, A: torch.Tensor, st: dict, place: str, rows: int) -> torch.Tensor:
        """A @ b.T for b the `rows` weight rows at `place` [rows, K]: bf16, or FP8 rows
        (statics QBK, RB) as tile_programs.gemm_fp8 multiplies them: with one scale per
        row, the e4m3 values (exact in bf16) and the product's columns times the scales;
        with k-blocks, bf16(float(e4m3) * scale) (models.quant.dequantize, then the
        tile's rounding)."""
        K = st["K"]
        if "QBK" not in st:
            return A @ self._weight(place, rows, K).T
        q, s = read_fp8_rows(
            self.places.raw(place, rows * st["RB"]).view(rows, st["RB"]), K, st["QBK"]
        )
        if st["QBK"] >= K:
            return (A @ q.T) * s[:, 0]
        return A @ self._r(q * s.repeat_interleave(st["QBK"], 1)[:, :K]).T

    def _gemm(self, st, a, n):
        A = self._in(a["A"], n)
        self._out(a["C"], n, self._times(A, st, a["B"], st["N"]))

    def _gemm_silu(self, st, a, n):
        A = self._in(a["A"], n)
        gu = self._times(A, st, a["B"], 2 * st["N"])
        g, u = gu[:, : st["N"]], gu[:, st["N"] :]
        self._out(a["C"], n, torch.nn.functional.silu(g) * u)

    def _qk_cache(self, st, a, n):
        H, KV, HD, S = st["H"], st["KV"], st["HD"], st["S"]
        pos = int(self.places.rt["meta"][0])
        qkv = self._in(a["qkv"], n).view(n, H + 2 * KV, HD)
        qk, v = qkv[:, : H + KV], qkv[:, H + KV :]
        if st["QK_NORM"]:
            w = torch.cat(
                [
                    self._weight(a["qn"], 1, HD).expand(H, HD),
                    self._weight(a["kn"], 1, HD).expand(KV, HD),
                ]
            )
            qk = qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + st["eps"]) * w
        inv_freq = self.places.rt["inv_freq"].to(qk.device)
        ang = torch.arange(pos, pos + n, device=qk.device, dtype=torch.float32)[:, None] * inv_freq
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        lo, hi = qk[..., : HD // 2], qk[..., HD // 2 :]
        rot = torch.cat([lo * cos - hi * sin, hi * cos + lo * sin], dim=-1)
        self._out(a["q"], n, rot[:, :H])
        kc = self.places.view(a["kc"], (KV, S, HD))
        vc = self.places.view(a["vc"], (KV, S, HD))
        kc[:, pos : pos + n] = rot[:, H:].transpose(0, 1)
        vc[:, pos : pos + n] = v.transpose(0, 1)

    def _attention(self, st, a, n):
        H, KV, HD, S = st["H"], st["KV"], st["HD"], st["S"]
        pos = int(self.places.rt["meta"][0])
        q = self._in(a["Q"], n).view(n, H, HD)
        kc = self._r(self.places.view(a["Kc"], (KV, S, HD))[:, : pos + n])
        vc = self._r(self.places.view(a["Vc"], (KV, S, HD))[:, : pos + n])
        g = H // KV
        k = kc.repeat_interleave(g, dim=0)  # [H, pos + n, HD]
        v = vc.repeat_interleave(g, dim=0)
        s = torch.einsum("rhd,hjd->hrj", q, k) * HD**-0.5
        keys = torch.arange(pos + n, device=s.device)
        q_pos = torch.arange(n, device=s.device) + pos  # the chunk's tokens' positions
        s = s.masked_fill(keys[None, None, :] > q_pos[None, :, None], float("-inf"))
        m = s.amax(-1, keepdim=True)
        p = torch.exp(s - m)
        out = torch.einsum("hrj,hjd->rhd", self._r(p), v) / p.sum(-1).transpose(0, 1)[..., None]
        self._out(a["Out"], n, out)


class GpuPrefill:
    """The prefill program's kernels on the GPU, sharing a GpuModel's arenas."""

    def __init__(
        self, manifest: dict, spec: dict, cubin: bytes, w: torch.Tensor, act: torch.Tensor
    ):
        self.spec, self.chunk = spec, int(spec["chunk"])
        dev = act.device
        self.max_seq_len = int(manifest["config"]["max_seq_len"])
        rt = {
            "meta": torch.zeros(META_WORDS, dtype=torch.int32, device=dev),
            "tokens": torch.zeros(self.max_seq_len, dtype=torch.int32, device=dev),
            "inv_freq": torch.tensor(manifest["rope_inv_freq"], dtype=torch.float32, device=dev),
        }
        tensors = {t["name"]: t for t in manifest["tensors"]}
        self.places = _Places(spec, tensors, w, act, rt)
        self.module, self.fns = load_kernels(cubin, spec["kernels"])
        self._keep: list = []  # the argument values the argv arrays point at
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}  # tokens / GRAPH_TOKENS -> graph
        self.launches = [self._bind(la) for la in spec["launches"]]

    def _bind(self, la: dict):
        """(function, kernel spec, argv address) of one launch, all arguments resolved."""
        k = self.spec["kernels"][la["kernel"]]

        def addr_of(param: str) -> int:
            place = la["args"].get(param)
            if place is None:
                raise PrefillError(f"prefill.json: launch of {la['kernel']} binds no '{param}'")
            return self.places.address(place)

        what = f"{la['kernel']} (L{la['layer']})"
        for p in k["params"]:  # a TMA descriptor must not reach past what it is bound to
            if p["kind"] == "tmap":
                t = p["tmap"]
                reach = max(s * d for s, d in zip(t["strides"], t["dims"][1:], strict=True))
                room = self.places.room(la["args"][p["name"]])
                if reach > room:
                    raise PrefillError(
                        f"prefill.json: {what}.{p['name']} spans {reach} bytes, its tensor "
                        f"has {room}: not this artifact's program; recompile"
                    )
        argv, keep = kernel_argv(k, addr_of, what)
        self._keep.append(keep)
        return self.fns[la["kernel"]], k, argv

    def run(self, tokens: Sequence[int], pos: int, only: Sequence[str] | None = None) -> None:
        """Enqueue the chunks' launches on the current stream; no synchronisation.
        `only`: launch just the kernels of these kinds (to time them apart). A chunk's
        launches are captured once per grid shape (tokens in whole tiles) as a CUDA graph
        and replayed: the kernels read pos and n from `meta`, not from their arguments."""
        check_prompt(len(tokens), pos, self.max_seq_len)
        rt = self.places.rt
        rt["tokens"][: len(tokens)].copy_(torch.tensor(list(tokens), dtype=torch.int32))
        for at, n in _chunks(len(tokens), self.chunk):
            rt["meta"].copy_(torch.tensor([pos + at, n, at, 0], dtype=torch.int32))
            if only is not None:
                self._launch(n, only)
                continue
            key = -(-n // GRAPH_TOKENS)
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._launch(key * GRAPH_TOKENS, None)
            graph.replay()

    def _launch(self, n: int, only: Sequence[str] | None) -> None:
        stream = torch.cuda.current_stream(self.places.rt["meta"].device).cuda_stream
        for fn, k, argv in self.launches:
            if only is not None and k["kind"] not in only:
                continue
            grid = list(k["grid"])
            grid[k["row_axis"]] = -(-n // k["row_tile"]) * k["row_blocks"]
            launch_kernel(fn, k, argv, stream, grid)


def load_kernels(cubin: bytes, kernels: dict) -> tuple[object, dict]:
    """The cubin's module and {name: function} for each kernel spec, dynamic shared
    memory raised where a spec needs more than the default 48 KiB."""
    from cuda.bindings import driver

    module = checked(driver.cuModuleLoadData(cubin), "loading the prefill cubin")
    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    fns = {}
    for name, k in kernels.items():
        fn = checked(
            driver.cuModuleGetFunction(module, k["symbol"].encode()),
            f"finding prefill kernel {k['symbol']}",
        )
        if k["smem"] > 48 * 1024:
            checked(driver.cuFuncSetAttribute(fn, attr, k["smem"]), "raising dynamic smem")
        fns[name] = fn
    return module, fns


def launch_kernel(fn, k: dict, argv: int, stream, grid: Sequence[int] | None = None) -> None:
    """One launch of a kernel spec's function (grid: the spec's unless given)."""
    from cuda.bindings import driver

    grid = list(grid or k["grid"])
    checked(
        driver.cuLaunchKernel(fn, *grid, *k["block"], k["smem"], stream, argv, 0),
        "launching a prefill kernel",
    )


def kernel_argv(k: dict, addr_of, what: str) -> tuple[int, list]:
    """A kernel's argument array for cuLaunchKernel: each parameter of its spec bound to
    the device address `addr_of(name)` gives, TMA descriptors encoded for it. Returns the
    array's address and the objects it points into (keep them alive)."""
    ptrs, keep = [], []
    for p in k["params"]:
        addr = addr_of(p["name"])
        if p["kind"] == "tmap":
            tm = _encode_tmap(p["tmap"], addr, f"{what}.{p['name']}")
            keep.append(tm)
            ptrs.append(int(tm.getPtr()))
        elif p["kind"] == "ptr":
            v = ctypes.c_void_p(addr)
            keep.append(v)
            ptrs.append(ctypes.addressof(v))
        else:
            raise PrefillError(f"prefill.json: {what}: parameter kind {p['kind']}")
    argv = (ctypes.c_void_p * len(ptrs))(*ptrs)
    keep.append(argv)
    return ctypes.addressof(argv), keep


def _encode_tmap(t: dict, addr: int, what: str):
    from cuda.bindings import driver

    if addr % 16:
        raise PrefillError(f"{what}: TMA needs a 16-byte aligned address")
    return checked(
        driver.cuTensorMapEncodeTiled(
            driver.CUtensorMapDataType(t["dtype"]),
            len(t["dims"]),
            addr,
            [driver.cuuint64_t(x) for x in t["dims"]],
            [driver.cuuint64_t(x) for x in t["strides"]],
            [driver.cuuint32_t(x) for x in t["box"]],
            [driver.cuuint32_t(x) for x in t["elem_strides"]],
            driver.CUtensorMapInterleave(t["interleave"]),
            driver.CUtensorMapSwizzle(t["swizzle"]),
            driver.CUtensorMapL2promotion(t["l2_promotion"]),
            driver.CUtensorMapFloatOOBfill(t["oob_fill"]),
        ),
        f"encoding the TMA descriptor of {what}",
    )
