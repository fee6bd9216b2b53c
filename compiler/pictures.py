"""Pictures of a schedule: the per-SM Gantt chart and one layer's dependency graph.

- `schedule.png/.svg`: one row per SM, one bar per task at its predicted time, coloured by
  task kind, odd layers lighter than even ones; a thin line marks an SM waiting on a
  dependency (a gap before a task). `schedule-layerN.*` zooms into layer N.
- `deps-layerN.dot/.svg/.png`: layer N's tasks (boxes, grouped by op) and the counters
  that join them (diamonds): a task signals one counter, a task waits on counters. The
  SVG comes from graphviz `dot` where it is installed, else from matplotlib.

matplotlib is optional: it is imported only here, and its absence is one `PictureError`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

from tilert_compiler.explain import durations
from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import Schedule, Task

# Fixed colours per kind (ir/kinds.py) so pictures of different models compare; unknown
# kinds take the next free colour of the palette.
KIND_COLOURS = {name: k.colour for name, k in KINDS.items()}
_SPARE = ("#e377c2", "#17becf", "#bcbd22", "#9edae5", "#c49c94", "#f7b6d2")


class PictureError(RuntimeError):
    """Pictures cannot be drawn (matplotlib missing)."""


def _mpl() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PictureError(
            "pictures need matplotlib: pip install matplotlib (or the [dev] extra)"
        ) from None
    from matplotlib.figure import Figure  # the OO API: no pyplot, no global backend state

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in SVG (small, greppable)
    return Figure


def kind_colours(kinds: list[str]) -> dict[str, str]:
    out, spare = {}, iter(_SPARE)
    for k in kinds:
        out[k] = KIND_COLOURS.get(k) or next(spare, "#444444")
    return out


def _lighten(hex_colour: str, amount: float) -> tuple[float, float, float]:
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _spans(sched: Schedule, target: Target) -> list[tuple[float, float]]:
    return durations(sched, target)


def layer_window(sched: Schedule, target: Target, layer: int) -> tuple[float, float]:
    spans = _spans(sched, target)
    mine = [spans[t.id] for t in sched.program.tasks if t.layer == layer]
    if not mine:
        raise PictureError(f"no tasks in layer {layer}")
    return min(s for s, _ in mine), max(e for _, e in mine)


# ---------------------------------------------------------------- Gantt chart


def gantt(
    sched: Schedule,
    target: Target,
    stem: Path,
    window: tuple[float, float] | None = None,
    title: str = "",
) -> list[Path]:
    """Write `stem`.png and `stem`.svg: the per-SM Gantt chart, optionally of a time
    window (seconds)."""
    Figure = _mpl()
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.patches import Patch

    tasks = sched.program.tasks
    spans = _spans(sched, target)
    kinds = list(dict.fromkeys(t.kind for t in tasks))
    colour = kind_colours(kinds)
    sms = len(sched.sm_lists)
    lo, hi = window or (0.0, max((e for _, e in spans), default=0.0))
    us = 1e6

    boxes, faces, gaps = [], [], []
    for sm, ids in enumerate(sched.sm_lists):
        free = 0.0
        for i in ids:
            s, e = spans[i]
            if e >= lo and s <= hi:
                boxes.append([(s * us, sm - 0.42), (e * us, sm - 0.42), (e * us, sm + 0.42),
                              (s * us, sm + 0.42)])  # fmt: skip
                t = tasks[i]
                faces.append(
                    _lighten(colour[t.kind], 0.45 if t.layer >= 0 and t.layer % 2 else 0.0)
                )
                if s > free + 1e-12 and s >= lo:  # a wait: the SM is free, its inputs are not
                    gaps.append([(max(free, lo) * us, sm), (s * us, sm)])
            free = e
    height = min(14.0, 1.6 + 0.075 * sms)
    fig = Figure(figsize=(16, height), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    # Task borders only where a typical bar is several pixels wide (a zoom, a small model).
    widths = sorted(b[1][0] - b[0][0] for b in boxes) or [0.0]
    px = widths[len(widths) // 2] / max((hi - lo) * us, 1e-9) * 1500
    edge = dict(edgecolors="white", linewidths=0.4) if px >= 8 else dict(edgecolors="none")
    ax.add_collection(PolyCollection(boxes, facecolors=faces, **edge))
    ax.add_collection(LineCollection(gaps, colors="#555555", linewidths=0.6))
    ax.set_xlim(lo * us, hi * us)
    ax.set_ylim(sms - 0.5, -0.5)  # SM 0 on top
    ax.set_xlabel("predicted time (us, cost model)")
    ax.set_ylabel("SM")
    step = max(1, sms // 16)
    ax.set_yticks(range(0, sms, step))
    ax.tick_params(axis="y", labelsize=7)
    _layer_ticks(ax, tasks, spans, lo, hi)
    handles = [Patch(color=colour[k], label=k) for k in kinds]
    first = colour[kinds[-1]] if kinds else "#808080"
    handles.append(Patch(color=_lighten(first, 0.45), label="odd layers: lighter"))
    handles.append(Patch(facecolor="white", edgecolor="#555555", label="gap + line: waiting"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.002, 1.0), fontsize=8,
              frameon=False)  # fmt: skip
    ax.set_title(title, fontsize=10, loc="left")
    return _save(fig, stem)


def _layer_ticks(ax: Any, tasks: tuple[Task, ...], spans, lo: float, hi: float) -> None:
    """Layer starts as ticks on the top axis, so a reader finds layer N on the time axis."""
    starts: dict[int, float] = {}
    for t in tasks:
        if t.layer >= 0:
            starts[t.layer] = min(starts.get(t.layer, spans[t.id][0]), spans[t.id][0])
    shown = {layer: s for layer, s in starts.items() if lo <= s <= hi}
    if not shown:
        return
    every = max(1, len(shown) // 24)
    top = ax.secondary_xaxis("top")
    picked = sorted(shown.items())[::every]
    top.set_xticks([s * 1e6 for _, s in picked], labels=[f"L{layer}" for layer, _ in picked])
    top.tick_params(labelsize=7)


# ---------------------------------------------------------------- dependency graph


def layer_graph(sched: Schedule, layer: int) -> tuple[list[Task], dict[int, list[int]], set[int]]:
    """Layer `layer`'s tasks, each counter they touch -> its producers, and the counters
    signalled from outside the layer (its inputs)."""
    tasks = [t for t in sched.program.tasks if t.layer == layer]
    if not tasks:
        raise PictureError(f"no tasks in layer {layer}")
    producers: dict[int, list[int]] = defaultdict(list)
    for t in sched.program.tasks:
        if t.signal >= 0:
            producers[t.signal].append(t.id)
    mine = {t.id for t in tasks}
    touched = {t.signal for t in tasks if t.signal >= 0} | {c for t in tasks for c, _ in t.waits}
    inputs = {c for c in touched if not any(p in mine for p in producers[c])}
    return tasks, {c: producers[c] for c in sorted(touched)}, inputs


def layer_dot(sched: Schedule, layer: int) -> str:
    """Graphviz DOT: tasks as boxes clustered by op, counters as diamonds between them."""
    tasks, counters, inputs = layer_graph(sched, layer)
    allt = sched.program.tasks
    colour = kind_colours(list(dict.fromkeys(t.kind for t in allt)))
    names = sched.program.counters
    lines = [
        f'digraph "layer {layer}" {{',
        "  rankdir=TB; nodesep=0.05; ranksep=0.4;",
        '  node [shape=box, style=filled, fontname="Helvetica", fontsize=9, height=0.25];',
    ]
    by_op: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        by_op[t.op].append(t)
    for n, (op, ts) in enumerate(by_op.items()):
        kind = ts[0].kind
        lines.append(f"  subgraph cluster_{n} {{")
        lines.append(f'    label="{op} ({kind}, {len(ts)} tasks)"; color="#bbbbbb";')
        for t in ts:
            args = " ".join(f"{k}={v}" for k, v in t.args)
            lines.append(
                f'    t{t.id} [label="t{t.id}\\n{args}", fillcolor="{colour[kind]}", '
                'fontcolor="white"];'
            )
        lines.append("  }")
    for c in counters:
        where = "input" if c in inputs else "counter"
        fill = "#eeeeee" if c in inputs else "#ffffff"
        lines.append(
            f'  c{c} [shape=diamond, fillcolor="{fill}", '
            f'label="c{c} {where}\\n{names[c].name}\\n{names[c].producers} producers"];'
        )
    mine = {t.id for t in tasks}
    for c, prods in counters.items():
        lines += [f"  t{p} -> c{c};" for p in prods if p in mine]
    for t in tasks:
        lines += [f"  c{c} -> t{t.id};" for c, _ in t.waits]
    lines.append("}")
    return "\n".join(lines) + "\n"


def layer_graph_picture(sched: Schedule, layer: int, stem: Path) -> list[Path]:
    """`stem`.svg via graphviz if installed, else `stem`.svg and `stem`.png via matplotlib."""
    dot = shutil.which("dot")
    if dot:
        svg = stem.with_suffix(".svg")
        subprocess.run(
            [dot, "-Tsvg", "-o", str(svg)], input=layer_dot(sched, layer), text=True, check=True
        )
        return [svg]
    return _draw_layer_graph(sched, layer, stem)


def _draw_layer_graph(sched: Schedule, layer: int, stem: Path) -> list[Path]:
    """A layered drawing: one row per op (in program order), its tasks spread across the
    row; each counter sits under its producers, at their mean x; edges are thin lines."""
    Figure = _mpl()
    from matplotlib.collections import LineCollection

    tasks, counters, inputs = layer_graph(sched, layer)
    allt = sched.program.tasks
    colour = kind_colours(list(dict.fromkeys(t.kind for t in allt)))
    names = sched.program.counters
    ops = list(dict.fromkeys(t.op for t in tasks))
    row = {op: i for i, op in enumerate(ops)}
    pos: dict[str, tuple[float, float]] = {}
    for op in ops:
        ts = [t for t in tasks if t.op == op]
        for j, t in enumerate(ts):
            pos[f"t{t.id}"] = ((j + 0.5) / len(ts), -3.0 * row[op])
    # Inputs on a row above the first op; a layer's own counters half way below their op.
    ins = [c for c in counters if c in inputs]
    for j, c in enumerate(ins):
        pos[f"c{c}"] = ((j + 0.5) / len(ins), 2.0)
    for c, prods in counters.items():
        if c not in inputs:
            xs = [pos[f"t{p}"][0] for p in prods if f"t{p}" in pos]
            op_row = max(row[allt[p].op] for p in prods if allt[p].op in row)
            pos[f"c{c}"] = (sum(xs) / len(xs), -3.0 * op_row - 1.5)
    _spread([f"c{c}" for c in counters if c not in inputs], pos)
    edges = []
    for c, prods in counters.items():
        edges += [(pos[f"t{p}"], pos[f"c{c}"]) for p in prods if f"t{p}" in pos]
    for t in tasks:
        edges += [(pos[f"c{c}"], pos[f"t{t.id}"]) for c, _ in t.waits if f"c{c}" in pos]

    fig = Figure(figsize=(16, 1.4 + 1.25 * len(ops)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.add_collection(LineCollection(edges, colors="#c8c8c8", linewidths=0.25, zorder=1))
    for op in ops:
        ts = [t for t in tasks if t.op == op]
        xy = [pos[f"t{t.id}"] for t in ts]
        kind = ts[0].kind
        ax.scatter([x for x, _ in xy], [y for _, y in xy], marker="s", s=_size(len(ts)),
                   color=colour[kind], zorder=3)  # fmt: skip
        ax.text(-0.01, xy[0][1], f"{op}\n{kind} x{len(ts)}", ha="right", va="center", fontsize=8)
    cx = [pos[f"c{c}"] for c in counters]
    ax.scatter([x for x, _ in cx], [y for _, y in cx], marker="D", s=14, color="white",
               edgecolors="black", linewidths=0.6, zorder=4)  # fmt: skip
    for c in counters:  # name the inputs; number the layer's own counters where few
        x, y = pos[f"c{c}"]
        if c in inputs and len(ins) <= 12:
            ax.text(x, y + 0.45, f"c{c} {names[c].name}", ha="center", fontsize=7)
        elif c not in inputs and len(counters) <= 40:
            ax.text(x + 0.004, y - 0.2, f"c{c}", ha="left", va="top", fontsize=6, color="#444444")
    ax.text(-0.01, 2.0, "inputs\n(other layers)", ha="right", va="center", fontsize=8)
    ax.set_xlim(-0.16, 1.01)
    ax.set_ylim(-3.0 * (len(ops) - 1) - 2.4, 2.9)
    ax.axis("off")
    ax.set_title(
        f"layer {layer}: {len(tasks)} tasks (squares, by kind), {len(counters)} counters "
        "(diamonds); a task signals the counter below it and waits on those above",
        fontsize=10,
        loc="left",
    )
    return _save(fig, stem)


def _spread(keys: list[str], pos: dict[str, tuple[float, float]], gap: float = 0.03) -> None:
    """Push apart nodes of one row that would overlap (counters of similar producers)."""
    rows: dict[float, list[str]] = defaultdict(list)
    for k in keys:
        rows[pos[k][1]].append(k)
    for y, ks in rows.items():
        ks.sort(key=lambda k: pos[k][0])
        xs = [pos[k][0] for k in ks]
        for i in range(1, len(xs)):
            xs[i] = max(xs[i], xs[i - 1] + gap)
        shift = max(0.0, xs[-1] - 1.0) if xs else 0.0  # keep the row inside [0, 1]
        for k, x in zip(ks, xs, strict=True):
            pos[k] = (max(0.0, x - shift), y)


def _save(fig: Any, stem: Path) -> list[Path]:
    """`stem`.png, quantised to a 128-colour palette (flat colours: 3-5x smaller, same
    look), and `stem`.svg."""
    import io

    from PIL import Image  # matplotlib depends on Pillow

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    Image.open(buf).convert("RGB").quantize(colors=128).save(png, optimize=True)
    fig.savefig(svg)
    return [png, svg]


def _size(n: int) -> float:
    """Marker area: large for a few tasks, small enough for 150 tasks in a row."""
    return max(6.0, min(60.0, 2400.0 / max(n, 1)))


# ---------------------------------------------------------------- everything


def write_pictures(
    sched: Schedule, target: Target, folder: str | Path, layer: int = 0
) -> list[Path]:
    """The whole schedule, a zoom into `layer`, and `layer`'s dependency graph."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = sched.program
    step = max((e for _, e in _spans(sched, target)), default=0.0)
    title = (
        f"{p.model}: {len(p.tasks)} tasks on {len(sched.sm_lists)} SMs, "
        f"predicted {step * 1e6:.1f} us per step"
    )
    out = gantt(sched, target, folder / "schedule", title=title)
    lo, hi = layer_window(sched, target, layer)
    pad = 0.05 * (hi - lo)
    out += gantt(
        sched,
        target,
        folder / f"schedule-layer{layer}",
        window=(max(0.0, lo - pad), hi + pad),
        title=f"{p.model}: layer {layer} ({(hi - lo) * 1e6:.1f} us), SMs by predicted time",
    )
    dot = folder / f"deps-layer{layer}.dot"
    dot.write_text(layer_dot(sched, layer))
    out.append(dot)
    out += layer_graph_picture(sched, layer, folder / f"deps-layer{layer}")
    return out


def prefill_picture(program, target: Target, folder: str | Path, n: int | None = None):
    """The prefill program's launches over one chunk of n rows (default: a full chunk), a
    row per layer, each launch a bar as long as its predicted time, coloured by kind."""
    from tilert_compiler.explain import prefill_launch_cost

    n = n or program.chunk
    kernels = {k.name: k for k in program.kernels}
    Figure = _mpl()
    kinds = list(dict.fromkeys(k.kind for k in program.kernels))
    colour = kind_colours(kinds)
    layers = max(la.layer for la in program.launches) + 1
    fig = Figure(figsize=(11, 1.2 + 0.22 * layers))
    ax = fig.add_subplot()
    t = 0.0
    seen: set[str] = set()
    for la in program.launches:
        k = kernels[la.kernel]
        s = prefill_launch_cost(k, n, 0, target)[2] * 1e3
        label = k.kind if k.kind not in seen else None
        seen.add(k.kind)
        ax.barh(la.layer, s, left=t, height=0.8, color=colour[k.kind], label=label, lw=0)
        t += s
    ax.set_ylim(layers - 0.5, -0.5)
    ax.set_xlabel("predicted ms")
    ax.set_ylabel("layer")
    ax.set_title(f"{program.chunk}-token chunks: one chunk of {n} tokens, predicted {t:.2f} ms")
    ax.legend(loc="upper right", fontsize=8, ncols=2)
    fig.tight_layout()
    Path(folder).mkdir(parents=True, exist_ok=True)
    return _save(fig, Path(folder) / "prefill")
