"""tilert-compile: the command line.

    tilert-compile                         # bundled llama-3.2-1b -> build/llama-3.2-1b/
    tilert-compile models/bundled/qwen3-8b.yaml -o out/ --dump-ir
    tilert-compile path/to/hf_model_dir/
    tilert-compile tiny-llama --explain --pictures      # what the schedule does, pictured
    tilert-compile --from-ir out/ir/04-schedule.tir     # compile an (edited) IR dump

docs/inspecting.md explains dumps, --from-ir, --explain and the pictures.

After compiling it runs the result: on a GPU machine it loads the kernel, checks a few
steps and times one; without a GPU it interprets a few tokens on the CPU. Bad input is
one line on stderr and exit code 2, with nothing written or removed; what -o may be (a
new or empty folder, or an earlier artifact, replaced whole) is in docs/errors.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from tilert_compiler.runtime.log import add_flags as add_log_flags
from tilert_compiler.runtime.log import log
from tilert_compiler.runtime.log import restore as log_restore
from tilert_compiler.runtime.log import setup as log_setup

DEFAULT_MODEL = "llama-3.2-1b"
EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tilert-compile",
        description="Compile a decoder LLM description into one persistent CUDA kernel.",
    )
    p.add_argument(
        "model",
        nargs="?",
        help=f"model.yaml, HF config.json or folder, or a bundled name (default: {DEFAULT_MODEL};"
        " with --from-ir: the dump's own '# config:' line)",
    )
    p.add_argument(
        "-o",
        "--out",
        help="artifact folder: new, empty, or an earlier artifact, which is replaced whole"
        " (default: build/<model name>/)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="-o may be a folder of other files (the artifact's files go beside them and"
        " never replace one), and a build without a cubin may replace one with",
    )
    p.add_argument("--target", help="GPU arch, e.g. sm_90a (default: the description's)")
    p.add_argument("--sms", type=int, help="SM count to schedule for (default: the description's)")
    p.add_argument("--max-seq-len", type=int, help="KV-cache capacity in tokens")
    inspect = p.add_argument_group("inspecting what the compiler did (docs/inspecting.md)")
    inspect.add_argument(
        "--dump-ir",
        nargs="?",
        const="",
        metavar="DIR",
        help="write every stage's IR (default DIR: <out>/ir/)",
    )
    inspect.add_argument(
        "--from-ir",
        metavar="FILE",
        help="compile from a dumped (maybe edited) tile/deps/schedule/prefetch/layout/plan IR"
        " file: verify it, re-run the stages after it, generate code (default -o:"
        " build/<model>-from-ir/)",
    )
    inspect.add_argument(
        "--explain",
        action="store_true",
        help="print per layer and op: tasks, bytes, SMs, roles, predicted time vs the floor"
        " (implies --no-run)",
    )
    inspect.add_argument(
        "--pictures",
        nargs="?",
        const="",
        metavar="DIR",
        help="draw the schedule (per-SM Gantt, PNG+SVG) and a layer's dependency graph"
        " (DOT+SVG) (default DIR: <out>/pictures/; needs matplotlib)",
    )
    inspect.add_argument(
        "--pictures-layer",
        type=int,
        default=0,
        metavar="N",
        help="the layer whose schedule is zoomed into and whose dependency graph is drawn",
    )
    p.add_argument("--no-nvcc", action="store_true", help="emit CUDA source only, no cubin")
    p.add_argument(
        "--quantize",
        choices=["fp8"],
        help="store the linear projections as FP8 e4m3, one scale per output channel"
        " (weight-only: activations stay float32, bf16 in the prefill GEMMs; embedding and"
        " LM head stay bf16)",
    )
    tune = p.add_argument_group("kernel tuning")
    ablate = p.add_argument_group(
        "ablation switches (each turns off a pass measured to pay: docs/performance.md)"
    )
    ablate.add_argument(
        "--no-weight-ring",
        action="store_true",
        help="no producer warp / shared-memory weight ring (ablation)",
    )
    tune.add_argument(
        "--stage-kb",
        type=int,
        metavar="KB",
        help="KiB per weight-ring stage (default: 32, or the largest weight row if bigger)",
    )
    tune.add_argument(
        "--in-flight-kb",
        type=int,
        metavar="KB",
        help="KiB of weight copies each SM keeps in flight (default: the target's, 32; 0: the"
        " whole ring)",
    )
    tune.add_argument(
        "--ring-stages",
        type=int,
        metavar="N",
        help="the decode weight ring's stages (default: as many as fit beside the task"
        " scratch, at most half a decoder layer's weights per SM)",
    )
    tune.add_argument(
        "--attn-splits",
        type=int,
        metavar="N",
        help="split-KV factor of decode attention (default: the SMs over the kv heads, at"
        " least 16 cache rows a split at context 512)",
    )
    ablate.add_argument(
        "--no-cache-prefetch",
        action="store_true",
        help="the producer does not ask L2 for attention's KV cache rows ahead (ablation)",
    )
    ablate.add_argument(
        "--no-flags",
        action="store_true",
        help="every hand-off through a dependency counter, not through data that carries its"
        " step's parity (ablation)",
    )
    tune.add_argument(
        "--fp8-gemv",
        choices=["ffma", "mma"],
        help="how FP8 decode GEMVs dot a weight row with x: dequantize and FFMA (default,"
        " measured) or mma.sync on tensor cores with x as two f16 parts (not yet measured)",
    )
    tune.add_argument(
        "--prefill-chunk",
        type=int,
        metavar="N",
        help="prompt tokens per chunk of the prefill program (TileLang GEMMs and attention), a"
        " multiple of 128 (default 1024, at most max_seq_len); 0: no prefill program, prompts"
        " run as decode steps",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="kernel records per-task timestamps; a GPU run writes trace.json",
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=4,
        help="tokens to run after compiling (interpreted on CPU, or on the GPU)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="bind seeded random weights (seed 0) whatever the description names; without it"
        " only the bundled descriptions have random weights, and a model without loadable"
        " weights compiles but does not run",
    )
    p.add_argument("--no-run", action="store_true", help="compile only")
    add_log_flags(p)
    return p


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that every `finally` (temporary folders,
    nvcc's) runs before the process ends."""


def _on_sigterm(_signum, _frame) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_setup("tilert-compile", args, bare=True)

    def say(*parts: object) -> None:
        log.info(" ".join(map(str, parts)))

    try:
        before = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: SIGTERM is not ours to handle
        before = None
    try:
        return _run(args, say)
    except KeyboardInterrupt:
        print("tilert-compile: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("tilert-compile: terminated", file=sys.stderr)
        return 143
    except Exception as e:  # user-facing errors: one line, no traceback
        from tilert_compiler.errors import USER_ERRORS
        from tilert_compiler.ir.parse import ParseError
        from tilert_compiler.ir.verify import VerifyError
        from tilert_compiler.pictures import PictureError

        # A VerifyError on our own pipeline is a compiler bug (traceback); on an edited
        # dump it is the user's edit breaking an invariant.
        if args.from_ir and isinstance(e, VerifyError):
            print(f"tilert-compile: error: VerifyError in {args.from_ir}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if isinstance(e, (*USER_ERRORS, ParseError, PictureError)):
            print(f"tilert-compile: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)
        log_restore()


def _option_flags(args, only_set: bool = False) -> dict:
    """Compiler options from the flags (only_set: just the flags given, for --from-ir)."""
    flags = {
        "nvcc": not args.no_nvcc,
        "weight_ring": not args.no_weight_ring,
        "cache_prefetch": not args.no_cache_prefetch,
        "flags": not args.no_flags,
        "profile": args.profile,
    }
    names = (
        "stage_kb",
        "in_flight_kb",
        "ring_stages",
        "attn_splits",
        "prefill_chunk",
        "quantize",
        "fp8_gemv",
    )
    for name in names:
        if getattr(args, name) is not None:
            flags[name] = getattr(args, name)
    defaults = {
        "nvcc": True,
        "weight_ring": True,
        "cache_prefetch": True,
        "flags": True,
        "profile": False,
    }
    return {k: v for k, v in flags.items() if not only_set or v != defaults.get(k)}


def _run(args, say) -> int:
    import tilert_compiler as tc
    from tilert_compiler.models.config import describe

    overrides: dict = {}
    if args.sms is not None:
        overrides.setdefault("target", {})["sms"] = args.sms
    if args.target is not None:
        overrides.setdefault("target", {})["arch"] = args.target
    if args.max_seq_len is not None:
        overrides["max_seq_len"] = args.max_seq_len
    if args.random_weights:
        overrides["weights"] = {"random": 0}
    t0 = time.perf_counter()
    if args.from_ir:
        from tilert_compiler.driver import compile_from_ir

        # Options the dump recorded hold unless a flag says otherwise.
        kw = _option_flags(args, only_set=True)
        if args.out:
            _check_outputs(args, Path(args.out))
        say(f"compiling from {args.from_ir}")
        cm = compile_from_ir(
            args.from_ir, args.model, overrides=overrides or None, progress=say, **kw
        )
        cfg = cm.config
        _check_weights_to_run(cfg, args)
        out = Path(args.out) if args.out else Path("build") / f"{cfg.name}-from-ir"
    else:
        cfg = tc.load_config(args.model or DEFAULT_MODEL, overrides=overrides or None)
        out = Path(args.out) if args.out else Path("build") / cfg.name
        flags = _option_flags(args)  # bad flag values fail before any work
        _check_outputs(args, out)  # and so do output paths it would refuse
        _check_weights_to_run(cfg, args)  # and a run without weights
        say(f"compiling {describe(cfg)}")
        cm = tc.compile(cfg, progress=say, **flags)
    run = not (args.no_run or args.explain or args.tokens <= 0)
    # Weights are read (and checked: NaN, Inf) before anything is written.
    weights = _load_weights(cm, say) if run else None
    _write(cm, cfg, out, args, say)
    r = cm.resources
    res = (
        (
            f"{r.registers} registers, {r.spill_stores + r.spill_loads} spill bytes, "
            f"{cm.manifest['smem_bytes']} B dynamic smem"
        )
        if r
        else "no cubin (--no-nvcc)"
    )
    pre_text = "; no prefill program (prompts run as decode steps)"
    if cm.tiles is not None:
        t = cm.tiles
        pre_text = (
            f"; prefill: chunks of {t.program.chunk} tokens, {len(t.program.kernels)} kernels, "
            f"{len(t.program.launches)} launches a chunk"
        )
    say(
        f"wrote {out}/ in {time.perf_counter() - t0:.1f} s: {cm.manifest['tasks']} tasks, "
        f"{cm.manifest['counters']} counters, {res}{pre_text}"
    )
    if not run:
        return 0
    return _run_tokens(cm, out, args.tokens, say, weights)


def _check_weights_to_run(cfg, args) -> None:
    """A model with no weights bound compiles, but the run after compiling needs some."""
    if cfg.weights.bound or args.no_run or args.explain or args.tokens <= 0:
        return
    from tilert_compiler.models.text import ConfigError

    raise ConfigError(
        f"{cfg.weights.none}: nothing to run the model with; pass --random-weights to run "
        "it on random weights, or --no-run to compile only"
    )


def _check_outputs(args, out: Path) -> None:
    """Refuses, before compiling, the paths StagedArtifact would refuse after."""
    from tilert_compiler.codegen.nvcc import find_nvcc
    from tilert_compiler.runtime.artifact import check_folder, check_output

    check_output(out, force=args.force, cubin=not args.no_nvcc and find_nvcc() is not None)
    for what, folder, default in (
        ("--dump-ir", args.dump_ir, "ir"),
        ("--pictures", args.pictures, "pictures"),
    ):
        if folder is not None:
            check_folder(Path(folder) if folder else out / default, what)


def _write(cm, cfg, out: Path, args, say) -> None:
    """The artifact, with the dumps and pictures that go with it, all in place at once:
    a step that fails leaves the disk as it was (runtime/artifact.py StagedArtifact)."""
    from tilert_compiler.runtime.artifact import StagedArtifact

    with StagedArtifact(out, cm.artifact, force=args.force) as staged:
        if args.dump_ir is not None:
            from tilert_compiler.dumps import write_dumps

            ir_dir = Path(args.dump_ir) if args.dump_ir else out / "ir"
            files = write_dumps(cm, staged.folder(ir_dir, "--dump-ir"))
            say(f"IR dumps: {len(files)} files in {ir_dir}/ (edit one, then --from-ir FILE)")
        if args.pictures is not None:
            from tilert_compiler.pictures import write_pictures

            pic_dir = Path(args.pictures) if args.pictures else out / "pictures"
            pics = staged.folder(pic_dir, "--pictures")
            files = write_pictures(cm.schedule, cfg.target, pics, layer=args.pictures_layer)
            if cm.tiles is not None:
                from tilert_compiler.pictures import prefill_picture

                files += prefill_picture(cm.tiles.program, cfg.target, pics)
            say(f"pictures: {', '.join(f.name for f in files)} in {pic_dir}/")
        if args.explain:
            from tilert_compiler.explain import explain

            print(explain(cm.schedule, cfg.target), end="")
            if cm.tiles is not None:
                from tilert_compiler.explain import explain_prefill

                print(explain_prefill(cm.tiles.program, cfg.target), end="")


def _load_weights(cm, say):
    """The weights the run after compiling needs, read and checked (NaN, Inf) before
    anything is written, streamed a tensor at a time into the arena of what runs them: on
    a GPU the kernel's bf16 arena there; else a bf16 arena the CPU interpreter reads as
    float32 (the kernel's values, at half a float32 arena's host memory)."""
    import torch

    from tilert_compiler.models.weights import stream_weights
    from tilert_compiler.runtime.arena import pack_weights

    ws = cm.config.weights
    say(f"loading weights ({f'random, seed {ws.seed}' if ws.seed is not None else ws.path})")
    if torch.cuda.is_available() and cm.cubin is not None:
        return pack_weights(cm.artifact, stream_weights(cm.config), torch.bfloat16, "cuda")
    return pack_weights(cm.artifact, stream_weights(cm.config), torch.bfloat16)


def _run_tokens(cm, out: Path, n: int, say, weights) -> int:
    import torch

    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cm.config.vocab, (n,), generator=gen).tolist()
    if torch.cuda.is_available() and cm.cubin is not None:
        from tilert_compiler.runtime.gpu import GpuModel

        m = GpuModel(out, weights=weights)
        preds = [int(m.step(t, p).argmax()) for p, t in enumerate(prompt)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        iters = 50
        start.record()
        for _ in range(iters):
            m.launch(prompt[-1], n - 1)
        end.record()
        m.check()
        ms = start.elapsed_time(end) / iters
        print(
            f"GPU: next-token argmax {preds}; {ms:.3f} ms/step at pos {n - 1} "
            f"({1e3 / ms:.0f} tokens/s) on {torch.cuda.get_device_name()}"
        )
        if m.profiled:  # the last launch's measured timeline
            from tilert_compiler.runtime.trace import timeline

            stamps, sm_of = m.timeline()
            tl = timeline(stamps, sm_of, m.art.table)
            tl.write_trace(out / "trace.json")
            print(tl.summary())
            say(f"wrote {out / 'trace.json'} (open in ui.perfetto.dev)")
        return 0
    say(f"no GPU: interpreting {n} tokens on the CPU (float32 reference of the task table)")
    t0 = time.perf_counter()
    logits = cm.interpret(prompt, weights=weights)
    dt = (time.perf_counter() - t0) / n
    print(f"CPU interpreter: next-token argmax {logits.argmax(-1).tolist()} ({dt:.2f} s/token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
