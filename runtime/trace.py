"""Measured timeline of one decode step (artifact compiled with profile=True).

The kernel records, per task, the global timer at five points: before its dependency
wait, when the wait is over, when its inputs are loaded (GEMVs and attention), when its
own work is done (a GEMV's rows dotted; an attention split's partials written), and when
the task is done, plus the time it waited for weight chunks and the time it spent on them
(thread 0's view: from each chunk's wait to its release). From those this module writes a
Chrome/Perfetto trace (one track per SM), a per-SM Gantt PNG of measured times, and a
summary: busy and dependency-wait time per SM and per task kind.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass
class Timeline:
    start: np.ndarray  # [n] us: wait start (relative to the step's first task)
    run: np.ndarray  # [n] us: run start
    end: np.ndarray  # [n] us: done
    weights: np.ndarray  # [n] us: inside the run, waiting for weight chunks (ring builds)
    loaded: np.ndarray  # [n] us: inputs loaded (NaN for kinds without an input phase)
    computed: np.ndarray  # [n] us: own work done, before the epilogue or combine (or NaN)
    chunks: np.ndarray  # [n] us: inside the work, on ring chunks (after their waits)
    sm: list[int]
    kind: list[str]
    layer: list[int]
    variant: list[str]  # the task's variant label (kind and static arguments: one per op)

    @property
    def span_us(self) -> float:
        return float(self.end.max())

    def summary(self) -> str:
        lines = [f"measured step span {self.span_us:.1f} us over {len(set(self.sm))} SMs"]
        by_kind: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(self.kind):
            by_kind[k].append(i)
        lines.append(
            f"{'kind':<18}{'tasks':>7}{'run us':>9}{'inputs':>9}{'work':>9}{'weights':>9}"
            f"{'chunks':>9}{'dep wait':>9}{'busy %':>8}"
        )
        lines.append(
            f"{'':<25}(run = from the wait's end to done; inputs: the part until the inputs "
            "were loaded; work: from then until the task's own work was done, before its "
            "epilogue or combine; weights: waiting for weight chunks; chunks: thread 0 on "
            "the chunks, from each wait's end to the chunk's release)"
        )
        total = self.span_us * len(set(self.sm))

        def mean(x: np.ndarray) -> str:
            return f"{np.nanmean(x):>9.2f}" if np.isfinite(x).any() else f"{'-':>9}"

        for k, idx in by_kind.items():
            run = self.end[idx] - self.run[idx]
            wait = self.run[idx] - self.start[idx]
            inputs = self.loaded[idx] - self.run[idx]
            work = self.computed[idx] - self.loaded[idx]
            lines.append(
                f"{k:<18}{len(idx):>7}{run.mean():>9.2f}{mean(inputs)}{mean(work)}"
                f"{self.weights[idx].mean():>9.2f}{self.chunks[idx].mean():>9.2f}{wait.mean():>9.2f}"
                f"{100 * run.sum() / total:>7.1f}%"
            )
        busy = float((self.end - self.run).sum())
        waiting = float((self.run - self.start).sum())
        weights = float(self.weights.sum())
        lines.append(
            f"all SMs: running {100 * busy / total:.1f}% (of which waiting on weights "
            f"{100 * weights / total:.1f}%), waiting on dependencies {100 * waiting / total:.1f}%,"
            f" idle {100 * (1 - (busy + waiting) / total):.1f}%"
        )
        lines.append("per SM, us: running / of which waiting on weights / waiting on dependencies")
        per_sm: dict[int, list[int]] = defaultdict(list)
        for i, sm in enumerate(self.sm):
            per_sm[sm].append(i)
        cells = []
        for sm, idx in sorted(per_sm.items()):
            run = float((self.end[idx] - self.run[idx]).sum())
            dep = float((self.run[idx] - self.start[idx]).sum())
            cells.append(f"sm{sm} {run:.0f}/{float(self.weights[idx].sum()):.0f}/{dep:.0f}")
        lines += ["  " + "  ".join(cells[i : i + 6]) for i in range(0, len(cells), 6)]
        return "\n".join(lines)

    def layer_chain(self, layer: int) -> str:
        """One layer's ops in task order (an op: a kind with its static arguments, so the
        o-proj and the down-proj are told apart): medians over the op's tasks of when the
        inputs were loaded, the own work done and the task ended (us from the step's
        start), the last task's end, and per task the weight waits and chunk time. Then
        the layer's period: its first op's inputs loaded against the next layer's."""
        ops: dict[str, list[int]] = {}
        for i, (v, lay) in enumerate(zip(self.variant, self.layer, strict=True)):
            if lay == layer:
                ops.setdefault(v, []).append(i)
        if not ops:
            return f"layer {layer}: no tasks"

        def med(x: np.ndarray) -> str:
            return f"{np.nanmedian(x):>10.1f}" if np.isfinite(x).any() else f"{'-':>10}"

        lines = [
            f"layer {layer}, us from the step's start (medians over each op's tasks; "
            "weights and chunks: per task)",
            f"{'op':<44}{'tasks':>6}{'loaded':>10}{'work done':>10}{'ends':>10}{'last end':>10}"
            f"{'weights':>9}{'chunks':>9}",
        ]
        for v, idx in ops.items():
            lines.append(
                f"{v[:43]:<44}{len(idx):>6}{med(self.loaded[idx])}{med(self.computed[idx])}"
                f"{med(self.end[idx])}{self.end[idx].max():>10.1f}"
                f"{np.median(self.weights[idx]):>9.2f}{np.median(self.chunks[idx]):>9.2f}"
            )
        first = next(iter(ops))
        here = np.nanmedian(self.loaded[ops[first]])
        nxt = [
            i
            for i, (v, lay) in enumerate(zip(self.variant, self.layer, strict=True))
            if lay == layer + 1 and v == first
        ]
        if nxt and np.isfinite(here):
            period = np.nanmedian(self.loaded[nxt]) - here
            lines.append(
                f"layer period ({first} inputs loaded to the next layer's): {period:.1f} us"
            )
        return "\n".join(lines)

    def chrome_trace(self) -> dict:
        ev = []
        for i in range(len(self.sm)):
            args = {
                "task": i,
                "weights_us": round(float(self.weights[i]), 3),
                "chunks_us": round(float(self.chunks[i]), 3),
            }
            if np.isfinite(self.loaded[i]):
                args["inputs_us"] = round(float(self.loaded[i] - self.run[i]), 3)
            if np.isfinite(self.computed[i]) and np.isfinite(self.loaded[i]):
                args["work_us"] = round(float(self.computed[i] - self.loaded[i]), 3)
            if self.run[i] > self.start[i]:
                ev.append(
                    {
                        "name": "wait",
                        "cat": "wait",
                        "ph": "X",
                        "pid": 0,
                        "tid": self.sm[i],
                        "ts": float(self.start[i]),
                        "dur": float(self.run[i] - self.start[i]),
                    }
                )
            ev.append(
                {
                    "name": f"{self.kind[i]} L{self.layer[i]}",
                    "cat": self.kind[i],
                    "ph": "X",
                    "pid": 0,
                    "tid": self.sm[i],
                    "ts": float(self.run[i]),
                    "dur": float(self.end[i] - self.run[i]),
                    "args": args,
                }
            )
        ev += [
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": s, "args": {"name": f"SM {s}"}}
            for s in sorted(set(self.sm))
        ]
        return {"traceEvents": ev, "displayTimeUnit": "ns"}

    def write_trace(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.chrome_trace(), f)

    def write_gantt(self, path, title: str = "") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kinds = sorted(set(self.kind))
        colors = dict(zip(kinds, plt.cm.tab10.colors, strict=False))
        n_sm = max(self.sm) + 1
        fig, ax = plt.subplots(figsize=(14, max(4, n_sm * 0.06 + 2)), dpi=110)
        for k in kinds:
            idx = [i for i, x in enumerate(self.kind) if x == k]
            ax.barh(
                [self.sm[i] for i in idx],
                self.end[idx] - self.run[idx],
                left=self.run[idx],
                height=0.8,
                color=colors[k],
                label=k,
                linewidth=0,
            )
        ax.set_xlabel("measured time (us)")
        ax.set_ylabel("SM")
        ax.set_ylim(n_sm, -1)
        ax.set_title(title or "measured timeline: gaps are dependency waits")
        ax.legend(loc="upper right", fontsize=8, ncols=len(kinds))
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def timeline(stamps: np.ndarray, sm_of: list[int], table) -> Timeline:
    """stamps: int64 [n, 3..7] global-timer ns from GpuModel.timeline()."""
    t0 = stamps[:, 0].min()
    us = (stamps[:, :3] - t0) / 1e3
    kinds = [table.variants[int(k)].kind for k in table.records[:, 0]]
    labels = [table.variants[int(k)].label for k in table.records[:, 0]]
    layers = [int(x) for x in table.records[:, 1]]
    n = len(stamps)
    weights = stamps[:, 3] / 1e3 if stamps.shape[1] > 3 else np.zeros(n)
    chunks = stamps[:, 6] / 1e3 if stamps.shape[1] > 6 else np.zeros(n)
    loaded, computed = np.full(n, np.nan), np.full(n, np.nan)
    for col, word in ((loaded, 4), (computed, 5)):
        if stamps.shape[1] > word:
            has = stamps[:, word] > 0
            col[has] = (stamps[has, word] - t0) / 1e3
    return Timeline(
        us[:, 0],
        us[:, 1],
        us[:, 2],
        weights,
        loaded,
        computed,
        chunks,
        list(sm_of),
        kinds,
        layers,
        labels,
    )
