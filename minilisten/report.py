"""What a person reads of a run: Markdown tables, trajectory plots, the demo's ``tables.md`` and ``results.json``
(the numbers come from :mod:`minilisten.pipeline`)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_text

#: Table 1 columns: (metric key, header, scale)
METRIC_COLUMNS = [("l2", "L2 ↓", 1.0), ("fd", "FD ↓", 1.0), ("variation", "Variation", 1.0),
                  ("diversity", "Diversity", 1.0), ("pfd", "P-FD ↓", 1.0), ("l2_affect", "L2 Affect ×1e2 ↓", 100.0)]
TABLE5_COLUMNS = [("rec", "Rec ↓", 1.0), ("commit", "Commit ↓", 1.0), ("ppl", "PPL ↑", 1.0),
                  ("rec_swap", "Rec, swapped beta", 1.0)]


def markdown_table(rows: dict[str, dict], columns, title: str = "") -> str:
    """``rows``: name -> metrics dict; ``columns``: (key, header, scale) triples."""
    head = "| method | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    lines = ([f"**{title}**", ""] if title else []) + [head, sep]
    for name, r in rows.items():
        cells = ["" if r.get(k) is None or math.isnan(r[k]) else f"{r[k] * s:.4f}" for k, _, s in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_columns(has_valence: bool) -> list:
    """Table 1's columns; L2 Affect only when the data has valence."""
    return [c for c in METRIC_COLUMNS if has_valence or c[0] != "l2_affect"]


def save_plots(out: Path, clip, series: dict[str, np.ndarray], swap: tuple | None) -> list[str]:
    """GT vs generated trajectories of a few coefficients (``series``: name -> motion ``(T, 56)``) and one response
    decoded with two identities (``swap``: ``((label, motion), (label, motion))`` or None). Returns the files."""
    try:
        from matplotlib.figure import Figure  # no pyplot: the user's backend stays as it is
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'minilisten[plot]')", flush=True)
        return []
    t = np.arange(clip.T) / clip.fps
    figs = [("trajectories.png", [(0, "exp 0"), (1, "exp 1"), (50, "pose pitch"), (53, "jaw open")], series,
             f"test clip {clip.name} (listener {clip.listener_id}): ground truth vs generated")]
    if swap is not None:
        figs.append(("identity_swap.png", [(0, "exp 0"), (50, "pose pitch")], {f"identity {i}": m for i, m in swap},
                     "the same LR codes decoded with two listener identities (identity-disentangled VQ-VAE)"))
    files = []
    for name, dims, curves, title in figs:
        fig = Figure(figsize=(10, 2.2 * len(dims)))
        axes = fig.subplots(len(dims), 1, sharex=True)
        for ax, (d, label) in zip(axes, dims):
            for n, m in curves.items():
                ax.plot(t[:len(m)], m[:, d], label=n, lw=2.0 if n == "GT" else 1.2, alpha=1.0 if n == "GT" else 0.85)
            ax.set_ylabel(label)
        axes[0].legend(loc="upper right", ncol=len(curves), fontsize=8)
        axes[-1].set_xlabel("seconds")
        fig.suptitle(title)
        fig.tight_layout()
        files.append(str(out / name))
        fig.savefig(files[-1], dpi=110)
    return files


def demo_markdown(res) -> str:
    """The demo's ``tables.md`` for a :class:`~minilisten.pipeline.PipelineResult`."""
    cols = metric_columns(res.has_valence)
    colsa = [c for c in cols if c[0] not in ("variation", "diversity")]
    cols4 = colsa + [("lr_acc", "val LR acc ↑", 1.0)]
    emb = res.nn_speech_embedding
    md = [f"# minilisten demo ({res.data.what}, seed {res.cfg.seed})", "",
          f"{len(res.clips)} test clips (LM-listener's evaluation windows of the test split)"
          + (f"; NN speech content uses {emb}" if emb else "")
          + ("; L2 Affect compares valence predicted from motion by a ridge regressor fitted on the training "
             "split (`minilisten.metrics.ValenceRegressor`)" if res.has_valence else "") + ".", ""]
    if res.notes:
        md += ["What the data lacks, and what was left out because of it:", ""] + [f"- {n}" for n in res.notes] + [""]
    tables = [(res.table1, cols, "Table 1 — baselines and ours"),
              (res.table4, cols4, "Table 4 — ablation (multimodal LM, identity-disentangled VQ-VAE)"),
              (res.table3, cols4, "Table 3 — speaker modalities (IN/AdaIN VQ-VAE)"),
              (res.arig_ablation, colsa, "ARIG-style ablation (appendix; test clips)"),
              (res.table5, TABLE5_COLUMNS, "Table 5 — VQ-VAE normalization (validation split)")]
    md += [x for rows, c, title in tables if rows for x in (markdown_table(rows, c, title), "")]
    md.append("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res.timings.items()))
    return "\n".join(md)


def write_demo_report(res, plots: list[str], react: tuple[dict, str] | None = None) -> tuple[str, dict]:
    """Write the demo's ``tables.md`` and ``results.json`` (tables, notes, timings, environment; ``react``: the REACT
    table's rows and title) into ``res.out`` atomically; returns the Markdown and the report."""
    from .bench import environment
    from .reactions import COLUMNS
    text = demo_markdown(res)
    if react is not None:
        text += "\n\n" + markdown_table(react[0], COLUMNS, f"REACT metrics (issue 25): {react[1]}")
    report = {"config": asdict(res.cfg), "data": res.data.what, "coverage": res.data.coverage.describe(),
              "notes": res.notes, "table1": res.table1, "table3": res.table3, "table4": res.table4,
              "table5": res.table5, "arig_ablation": res.arig_ablation,
              "lr_accuracy": {res.models[k]: v for k, v in res.lr_acc.items()},
              "all_results": res.results, "timings_s": res.timings, "plots": plots,
              "nn_speech_embedding": res.nn_speech_embedding, "n_test_clips": len(res.clips),
              "react": react and react[0], "versions": environment("cpu")}
    atomic_write_text(res.out / "tables.md", text + "\n")
    atomic_write_text(res.out / "results.json", json.dumps(report, indent=2, default=float))
    return text, report
