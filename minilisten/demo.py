"""The main job: ``python -m minilisten demo`` (whole pipeline, paper Tables 1/3/4/5) and
``python -m minilisten evaluate`` (saved checkpoints on any dataset).

demo, from nothing, on the embedded synthetic corpus:
1. generate the corpus;
2. train the naive (∅, ∅) and the identity-disentangled (IN, AdaIN) VQ-VAE -> Table 5;
3. tokenize the listener motion with both (LR codes);
4. LM stage 1 (speaker tokens only) for words-only (W) and multimodal (W+SA+emo) speaker input,
   then stage 2 on each VQ-VAE's codes: LM-listener = W on naive, MM only = W+SA+emo on naive,
   ID only = W on disentangled, Full = W+SA+emo on disentangled (Table 4); with ``--table3`` also
   W+SA and W+emo on the disentangled codes (Table 3);
5. greedy-decode the test clips (LM-listener's evaluation clips) with the fast static-cache
   decoder, decode the LR codes with the test listener's beta;
6. evaluate every model and baseline (Random, NN facial motion, NN speech content, Naive / Ours
   random walk) with the paper's metrics -> Table 1;
7. write tables (Markdown + JSON), checkpoints and plots into ``--out``.
"""
from __future__ import annotations

import argparse
import functools
import os
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text

METRIC_COLUMNS = [("l2", "L2 ↓", 1.0), ("fd", "FD ↓", 1.0), ("variation", "Variation", 1.0),
                  ("diversity", "Diversity", 1.0), ("pfd", "P-FD ↓", 1.0), ("l2_affect", "L2 Affect ×1e2 ↓", 100.0)]


@dataclass
class DemoConfig:
    """Sizes of the demo run. ``quick()`` is the CI-sized variant (~3 min on 2 cores)."""
    seed: int = 0
    # corpus
    n_identities: int = 8
    n_segments: int = 300
    seconds: float = 64.0
    # VQ-VAE (CPU-sized; the paper's sizes are VQConfig's defaults)
    vq_steps: int = 1000
    vq_batch: int = 32
    vq_width: int = 64
    vq_code_dim: int = 64
    vq_lr: float = 1e-3
    # LM (small LM from scratch, LLaMA layout = rotary positions, see lm.default_backbone; paper: GPT-2 Medium)
    lm_arch: str = "llama"
    lm_layers: int = 2
    lm_width: int = 128
    lm_heads: int = 4
    lm_window: int = 240         # training window in frames (30 LR steps), as evaluated: shorter windows
                                 # leave the late positions of multimodal sequences untrained
    stage1_steps: int = 150
    stage2_steps: int = 800
    lm_batch: int = 8
    lm_lr: float = 1e-3
    table3: bool = False
    decode_batch: int = 16
    max_test_clips: int = 128    # 0 = all of LM-listener's clips of the test split (256 by default)
    workers: int = min(2, os.cpu_count() or 1)   # parallel training processes (1 thread each)

    @classmethod
    def quick(cls, **kw) -> "DemoConfig":
        base = dict(n_identities=4, n_segments=40, seconds=32.0, vq_steps=150, vq_batch=16, vq_width=64,
                    vq_code_dim=64, lm_layers=2, lm_width=96, lm_heads=4, lm_window=240, stage1_steps=20,
                    stage2_steps=60, lm_batch=8, max_test_clips=12)
        return cls(**{**base, **kw})


def _log(msg: str) -> None:
    print(msg, flush=True)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown_table(rows: dict[str, dict], columns, title: str = "") -> str:
    """``rows``: name -> metrics dict; ``columns``: (key, header, scale) triples."""
    head = "| method | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    lines = ([f"**{title}**", ""] if title else []) + [head, sep]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k) * s if r.get(k) is not None else None)
                                                 for k, _, s in columns) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pipeline pieces
def decode_codes(vq, codes: list[np.ndarray], clips, batch: int = 64) -> list[np.ndarray]:
    """LR codes ``(L,)`` per clip -> raw motion ``(T, 56)`` with the clip's listener beta."""
    out: list = [None] * len(clips)
    order = sorted(range(len(clips)), key=lambda i: len(codes[i]))
    dev = vq.codebook.device
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            groups: dict[int, list[int]] = {}
            for i in idx:
                groups.setdefault(len(codes[i]), []).append(i)
            for L, ids in groups.items():
                c = torch.as_tensor(np.stack([codes[i] for i in ids]), dtype=torch.long, device=dev)
                beta = None
                if vq.needs_beta:
                    beta = torch.as_tensor(np.stack([clips[i].listener_beta for i in ids]), device=dev)
                m = vq.decode(c, beta).float().cpu().numpy()
                for i, mi in zip(ids, m):
                    out[i] = mi[:clips[i].T]
    return out


def generate_motion(lm, vq, clips, batch: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Greedy LR codes for each clip (fast static-cache decoder) and their decoded motion."""
    from .generate import Generator
    gen = Generator(lm, batch=min(batch, len(clips)))
    codes = gen.generate_segments(clips)
    return codes, decode_codes(vq, codes, clips)


def score(preds: list[np.ndarray], clips, valence_model, seed: int = 0) -> dict:
    from .metrics import evaluate_clips
    return evaluate_clips(
        preds, [c.listener_motion for c in clips], [c.speaker_motion for c in clips],
        pred_valence=[valence_model.predict(p) for p in preds], gt_valence=[c.valence for c in clips],
        fps=clips[0].fps, seed=seed)


def test_clips(segments, limit: int = 0):
    from .data import lm_listener_eval_clips
    clips = [c for s in segments for c in lm_listener_eval_clips(s)]
    if limit and len(clips) > limit:
        pick = np.linspace(0, len(clips) - 1, limit).round().astype(int)
        clips = [clips[i] for i in pick]
    return clips


# ----------------------------------------------------------------------------- plots
def save_plots(out: Path, clip, series: dict[str, np.ndarray], swap: tuple | None) -> list[str]:
    """GT vs generated trajectories of a few coefficients; one response with two identities."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("plots skipped: matplotlib is not installed (pip install 'minilisten[plot]')")
        return []
    files = []
    dims = [(0, "exp 0"), (1, "exp 1"), (50, "pose pitch"), (53, "jaw open")]
    t = np.arange(clip.T) / clip.fps
    fig, axes = plt.subplots(len(dims), 1, figsize=(10, 2.2 * len(dims)), sharex=True)
    for ax, (d, label) in zip(axes, dims):
        for name, m in series.items():
            ax.plot(t, m[:, d], label=name, lw=2.0 if name == "GT" else 1.2, alpha=1.0 if name == "GT" else 0.85)
        ax.set_ylabel(label)
    axes[0].legend(loc="upper right", ncol=len(series), fontsize=8)
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"test clip {clip.name} (listener {clip.listener_id}): ground truth vs generated")
    fig.tight_layout()
    files.append(str(out / "trajectories.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    if swap is not None:
        (id_a, m_a), (id_b, m_b) = swap
        fig, axes = plt.subplots(2, 1, figsize=(10, 4.4), sharex=True)
        for ax, (d, label) in zip(axes, [(0, "exp 0"), (50, "pose pitch")]):
            ax.plot(t[:len(m_a)], m_a[:, d], label=f"identity {id_a}")
            ax.plot(t[:len(m_b)], m_b[:, d], label=f"identity {id_b}")
            ax.set_ylabel(label)
        axes[0].legend(fontsize=8)
        axes[-1].set_xlabel("seconds")
        fig.suptitle("the same LR codes decoded with two listener identities (identity-disentangled VQ-VAE)")
        fig.tight_layout()
        files.append(str(out / "identity_swap.png"))
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


# ----------------------------------------------------------------------------- training jobs
def _slug(modalities: str) -> str:
    return modalities.replace("+", "_").lower()


@functools.lru_cache(maxsize=1)
def _corpus(seed, n_identities, n_segments, seconds):
    from .data import synthetic_corpus
    return synthetic_corpus(seed=seed, n_identities=n_identities, n_segments=n_segments, seconds=seconds)


def _vq_job(corpus_kw: dict, preset: str, out_dir: str, kw: dict) -> str:
    """Train one VQ-VAE into ``out_dir`` (runs in a worker process; the corpus is regenerated
    there from its seed, identical to the parent's)."""
    from .train_vq import train_vq
    c = _corpus(**corpus_kw)
    train_vq(c.train, c.val, preset=preset, out_dir=out_dir, progress=False, log=None, **kw)
    return out_dir


def _lm_job(corpus_kw: dict, init_dir: str | None, out_dir: str, kw: dict) -> str:
    """Train one LM stage into ``out_dir``, starting from ``init_dir`` (stage 1 result) if given."""
    from .lm import ListenerLM
    from .train_lm import train_lm
    c = _corpus(**corpus_kw)
    model = ListenerLM.from_pretrained(init_dir) if init_dir else None
    codes_tr, codes_va = kw.pop("lr_codes_train", None), kw.pop("lr_codes_val", None)
    train_lm(c.train, c.val, codes_tr, codes_va, model=model, out_dir=out_dir, progress=False, log=None, **kw)
    return out_dir


def _init_worker():
    torch.set_num_threads(1)


def _run_jobs(jobs: list, workers: int, progress: bool = True) -> list:
    """Run ``(fn, args)`` jobs in ``workers`` processes (1 thread each; 1 = in this process)."""
    from tqdm.auto import tqdm
    names = [Path(args[2]).name for _, args in jobs]
    bar = tqdm(total=len(jobs), desc="training " + ", ".join(names), disable=not progress, dynamic_ncols=True)
    results = []
    if workers <= 1:
        for fn, args in jobs:
            results.append(fn(*args))
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker) as ex:
            futures = [ex.submit(fn, *args) for fn, args in jobs]
            for f in futures:
                results.append(f.result())
                bar.update()
    bar.close()
    return results


# ----------------------------------------------------------------------------- demo
def run_demo(cfg: DemoConfig, out_dir: str | Path = "runs/demo", progress: bool = True) -> dict:
    """Run the whole pipeline; returns (and writes) the tables as a dict."""
    from .baselines import NNFacialMotion, NNSpeechContent, RandomListener, RandomWalk, predict_all
    from .metrics import ValenceRegressor
    from .lm import ListenerLM
    from .train_lm import lr_accuracy, vqvae_codes
    from .train_vq import evaluate_vq
    from .vqvae import VQVAE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def tick(name, t0):
        timings[name] = round(time.perf_counter() - t0, 1)
        _log(f"[{name}: {timings[name]:.0f} s]")

    t0 = time.perf_counter()
    torch.set_num_threads(1)   # measured: 1 thread per process beats 2 on a 2-core box under any load
    corpus = _corpus(cfg.seed, cfg.n_identities, cfg.n_segments, cfg.seconds)
    _log(f"corpus: {len(corpus.train)}/{len(corpus.val)}/{len(corpus.test)} segments of {cfg.seconds:.0f} s, "
         f"{cfg.n_identities} listener identities")
    tick("corpus", t0)

    # ---- VQ-VAEs (Table 5); independent trainings run in `workers` processes of 1 thread each
    corpus_kw = dict(seed=cfg.seed, n_identities=cfg.n_identities, n_segments=cfg.n_segments, seconds=cfg.seconds)
    presets = {"naive": "(∅, ∅) naive", "disentangled": "(IN, AdaIN) ours"}
    vq_kw = dict(steps=cfg.vq_steps, batch_size=cfg.vq_batch, lr=cfg.vq_lr, seed=cfg.seed, eval_every=0,
                 width=cfg.vq_width, code_dim=cfg.vq_code_dim)
    t0 = time.perf_counter()
    _run_jobs([(_vq_job, (corpus_kw, p, str(out / f"vq_{p}"), vq_kw)) for p in presets], cfg.workers, progress)
    vq = {p: VQVAE.from_pretrained(out / f"vq_{p}").eval() for p in presets}
    table5 = {label: evaluate_vq(vq[p], corpus.val) for p, label in presets.items()}
    tick("vq_training", t0)
    codes = {p: {s: vqvae_codes(vq[p], getattr(corpus, s)) for s in ("train", "val")} for p in vq}

    # ---- LMs: stage 1 per modality set, stage 2 per (modalities, VQ-VAE)
    mods = ["W", "W+SA+emo"] + (["W+SA", "W+emo"] if cfg.table3 else [])
    lm_kw = dict(batch_size=cfg.lm_batch, window=cfg.lm_window, lr=cfg.lm_lr, seed=cfg.seed, eval_every=0,
                 n_sa=corpus.n_sa, n_lr=vq["naive"].config.codebook_size,
                 backbone=dict(n_layer=cfg.lm_layers, n_embd=cfg.lm_width, n_head=cfg.lm_heads, arch=cfg.lm_arch))
    t0 = time.perf_counter()
    _run_jobs([(_lm_job, (corpus_kw, None, str(out / f"stage1_{_slug(m)}"), dict(lm_kw, stage=1, modalities=m,
                                                                               steps=cfg.stage1_steps)))
               for m in mods], cfg.workers, progress)
    tick("lm_stage1", t0)
    combos = {"LM-listener (W, naive VQ)": ("W", "naive"), "MM only (W+SA+emo, naive VQ)": ("W+SA+emo", "naive"),
              "ID only (W, IN/AdaIN VQ)": ("W", "disentangled"), "Full (W+SA+emo, IN/AdaIN VQ)": ("W+SA+emo", "disentangled")}
    if cfg.table3:
        combos.update({"W+SA (IN/AdaIN VQ)": ("W+SA", "disentangled"), "W+emo (IN/AdaIN VQ)": ("W+emo", "disentangled")})
    slugs = {"LM-listener (W, naive VQ)": "lm_listener", "MM only (W+SA+emo, naive VQ)": "lm_mm_only",
             "ID only (W, IN/AdaIN VQ)": "lm_id_only", "Full (W+SA+emo, IN/AdaIN VQ)": "lm_full",
             "W+SA (IN/AdaIN VQ)": "lm_w_sa", "W+emo (IN/AdaIN VQ)": "lm_w_emo"}
    t0 = time.perf_counter()
    jobs = []
    # the multimodal runs are the long ones: start them first so the two workers finish together
    for name, (m, p) in sorted(combos.items(), key=lambda kv: kv[1][0] == "W"):
        kw = {k: v for k, v in lm_kw.items() if k != "backbone"}
        jobs.append((_lm_job, (corpus_kw, str(out / f"stage1_{_slug(m)}"), str(out / slugs[name]),
                               dict(kw, stage=2, steps=cfg.stage2_steps, lr_codes_train=codes[p]["train"],
                                    lr_codes_val=codes[p]["val"]))))
    _run_jobs(jobs, cfg.workers, progress)
    tick("lm_stage2", t0)
    lms = {name: ListenerLM.from_pretrained(out / slugs[name]).eval() for name in combos}
    lr_acc = {name: lr_accuracy(lms[name], corpus.val, codes[p]["val"]) for name, (m, p) in combos.items()}
    for name, acc in lr_acc.items():
        _log(f"  validation LR-token accuracy {name}: {acc:.3f}")

    # ---- evaluation on the test clips
    t0 = time.perf_counter()
    clips = test_clips(corpus.test, cfg.max_test_clips)
    valence = ValenceRegressor().fit([s.listener_motion for s in corpus.train], [s.valence for s in corpus.train])
    preds: dict[str, list[np.ndarray]] = {}
    baselines = {
        "Random": RandomListener(seed=cfg.seed),
        "NN facial motion": NNFacialMotion(seed=cfg.seed),
        "NN speech content": NNSpeechContent(seed=cfg.seed),
    }
    for name, b in baselines.items():
        preds[name] = predict_all(b.fit(corpus.train), clips)
    emb = baselines["NN speech content"].embedding_name
    preds["Naive random walk"] = predict_all(RandomWalk(vq["naive"], seed=cfg.seed), clips)
    preds["Ours random walk"] = predict_all(RandomWalk(vq["disentangled"], seed=cfg.seed), clips)
    gen_codes = {}
    for name, (m, p) in combos.items():
        gen_codes[name], preds[name] = generate_motion(lms[name], vq[p], clips, cfg.decode_batch)
    results = {name: score(pr, clips, valence, cfg.seed) for name, pr in preds.items()}
    tick("evaluation", t0)

    gt = next(iter(results.values()))
    table1 = {"GT": {"variation": gt["variation_gt"], "diversity": gt["diversity_gt"]}}
    for name in ("Random", "NN facial motion", "NN speech content", "Naive random walk"):
        table1[name] = results[name]
    table1["LM-listener (words only)"] = results["LM-listener (W, naive VQ)"]
    table1["Ours random walk"] = results["Ours random walk"]
    table1["Ours"] = results["Full (W+SA+emo, IN/AdaIN VQ)"]
    table4 = {"Naive": results["LM-listener (W, naive VQ)"], "MM only": results["MM only (W+SA+emo, naive VQ)"],
              "ID only": results["ID only (W, IN/AdaIN VQ)"], "Full": results["Full (W+SA+emo, IN/AdaIN VQ)"]}
    for k, name in zip(table4, list(combos)[:4]):
        table4[k] = {**table4[k], "lr_acc": lr_acc[name]}
    table3 = None
    if cfg.table3:
        table3 = {m: {**results[n], "lr_acc": lr_acc[n]} for n, (m, p) in combos.items() if p == "disentangled"}

    # ---- plots: one test clip, and one response rendered with two identities
    k = int(np.argmax([np.var(c.listener_motion[:, :50], 0).sum() for c in clips]))
    series = {"GT": clips[k].listener_motion, "Ours": preds["Full (W+SA+emo, IN/AdaIN VQ)"][k],
              "LM-listener": preds["LM-listener (W, naive VQ)"][k]}
    ids = list(corpus.identities)
    other = next(i for i in ids if i != clips[k].listener_id)
    c_full = torch.as_tensor(gen_codes["Full (W+SA+emo, IN/AdaIN VQ)"][k])[None]
    with torch.no_grad():
        m_other = vq["disentangled"].decode(c_full, torch.as_tensor(corpus.identities[other])[None])[0].numpy()
    swap = ((clips[k].listener_id, preds["Full (W+SA+emo, IN/AdaIN VQ)"][k]), (other, m_other))
    plots = save_plots(out, clips[k], series, swap)

    # ---- report
    timings["total"] = round(time.perf_counter() - t_all, 1)
    cols5 = [("rec", "Rec ↓", 1.0), ("commit", "Commit ↓", 1.0), ("ppl", "PPL ↑", 1.0)]
    acc_col = [("lr_acc", "val LR acc ↑", 1.0)]
    md = [f"# minilisten demo (synthetic corpus, seed {cfg.seed})", "",
          f"{len(clips)} test clips (LM-listener's evaluation windows of the test split); NN speech content uses "
          f"{emb}; L2 Affect compares valence predicted from motion by a ridge regressor fitted on the training "
          f"split (`minilisten.metrics.ValenceRegressor`).", "",
          markdown_table(table1, METRIC_COLUMNS, "Table 1 — baselines and ours"), "",
          markdown_table(table4, METRIC_COLUMNS[:2] + METRIC_COLUMNS[4:] + acc_col,
                         "Table 4 — ablation (multimodal LM, identity-disentangled VQ-VAE)"), ""]
    if table3 is not None:
        md += [markdown_table(table3, METRIC_COLUMNS[:2] + METRIC_COLUMNS[4:] + acc_col,
                              "Table 3 — speaker modalities (IN/AdaIN VQ-VAE)"), ""]
    md += [markdown_table(table5, cols5, "Table 5 — VQ-VAE normalization (validation split)"), "",
           "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    text = "\n".join(md)
    report = {"config": asdict(cfg), "table1": table1, "table3": table3, "table4": table4, "table5": table5,
              "lr_accuracy": lr_acc, "all_results": results, "timings_s": timings, "plots": plots,
              "nn_speech_embedding": emb, "n_test_clips": len(clips),
              "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    atomic_write_text(out / "tables.md", text + "\n")
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=float))
    _log("\n" + text)
    _log(f"\nwrote {out / 'tables.md'}, {out / 'results.json'}" + "".join(f", {p}" for p in plots))
    return report


def main(argv: list[str] | None = None) -> int:
    from .lm import DEFAULT_ARCHS
    p = argparse.ArgumentParser(prog="python -m minilisten demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized run (~3 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table3", action="store_true", help="also train W+SA and W+emo LMs (paper Table 3)")
    p.add_argument("--lm-arch", choices=DEFAULT_ARCHS, default=None,
                   help="layout of the from-scratch LMs (default llama: rotary positions)")
    p.add_argument("--no-progress", action="store_true")
    for f in ("vq_steps", "stage1_steps", "stage2_steps", "n_segments", "n_identities", "max_test_clips"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=None)
    a = p.parse_args(argv)
    over = {f: getattr(a, f) for f in ("vq_steps", "stage1_steps", "stage2_steps", "n_segments", "n_identities",
                                       "max_test_clips") if getattr(a, f) is not None}
    over.update(seed=a.seed, table3=a.table3)
    if a.lm_arch:
        over["lm_arch"] = a.lm_arch
    cfg = DemoConfig.quick(**over) if a.quick else DemoConfig(**over)
    run_demo(cfg, a.out, progress=not a.no_progress)
    return 0


# ----------------------------------------------------------------------------- evaluate
def main_evaluate(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minilisten evaluate",
                                description="Evaluate saved VQ-VAE + LM checkpoints on a dataset's test split "
                                            "(Table 1 metrics, with the Random and NN baselines for reference).")
    p.add_argument("--data", help="dataset directory (ours, LM-listener or Learning2Listen); default: synthetic corpus")
    p.add_argument("--vq", required=True, help="VQ-VAE checkpoint directory")
    p.add_argument("--lm", required=True, help="ListenerLM checkpoint directory")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-clips", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", help="write results JSON here")
    a = p.parse_args(argv)
    from .baselines import NNFacialMotion, RandomListener, predict_all
    from .data import load_dataset, synthetic_corpus
    from .lm import ListenerLM
    from .metrics import ValenceRegressor
    from .vqvae import VQVAE

    ds = load_dataset(a.data) if a.data else synthetic_corpus(seed=a.seed)
    segs = getattr(ds, a.split)
    if not segs:
        raise ValueError(f"--split {a.split}: the dataset has no segments in that split")
    vq, lm = VQVAE.from_pretrained(a.vq).eval(), ListenerLM.from_pretrained(a.lm).eval()
    clips = test_clips(segs, a.max_clips)
    if not clips:
        raise ValueError(f"--split {a.split}: no evaluation clip of >= 24 frames after the 96-frame offset")
    have_val = all(c.valence is not None for c in clips) and all(s.valence is not None for s in ds.train)
    valence = ValenceRegressor().fit([s.listener_motion for s in ds.train], [s.valence for s in ds.train]) \
        if have_val else None
    preds = {"Random": predict_all(RandomListener(seed=a.seed).fit(ds.train), clips),
             "NN facial motion": predict_all(NNFacialMotion(seed=a.seed).fit(ds.train), clips)}
    preds["model"] = generate_motion(lm, vq, clips, a.batch)[1]
    from .metrics import evaluate_clips
    rows = {}
    for name, pr in preds.items():
        kw = {}
        if valence is not None:
            kw = dict(pred_valence=[valence.predict(x) for x in pr], gt_valence=[c.valence for c in clips])
        rows[name] = evaluate_clips(pr, [c.listener_motion for c in clips], [c.speaker_motion for c in clips],
                                    fps=clips[0].fps, seed=a.seed, **kw)
    rows = {"GT": {"variation": rows["model"]["variation_gt"], "diversity": rows["model"]["diversity_gt"]}, **rows}
    print(markdown_table(rows, METRIC_COLUMNS, f"{len(clips)} clips of split {a.split}"))
    if a.out:
        atomic_write_text(a.out, json.dumps(rows, indent=2, default=float))
    return 0
