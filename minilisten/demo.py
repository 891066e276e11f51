"""The main job: ``python -m minilisten demo`` (whole pipeline, paper Tables 1/3/4/5) and
``python -m minilisten evaluate`` (saved checkpoints on any dataset).

demo, from nothing, on a synthetic corpus (``--corpus NAME``, the default variant unless named) or
on a dataset directory (``--data DIR``: ours, LM-listener or Learning2Listen):
1. load or generate the data and say what it lacks (:class:`~minilisten.data.coverage.Coverage`);
2. train the naive (∅, ∅) and, when the data has beta, the identity-disentangled (IN, AdaIN)
   VQ-VAE -> Table 5;
3. tokenize the listener motion with both (LR codes);
4. LM stage 1 (speaker tokens only) for words-only (W) and multimodal (all modalities the data
   has) speaker input, then stage 2 on each VQ-VAE's codes: LM-listener = W on naive, MM only =
   multimodal on naive, ID only = W on disentangled, Full = multimodal on disentangled (Table 4);
   with ``--table3`` also W+SA and W+emo on the disentangled codes (Table 3). A row whose inputs
   the data cannot supply is left out, and the report says why, once;
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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text

METRIC_COLUMNS = [("l2", "L2 ↓", 1.0), ("fd", "FD ↓", 1.0), ("variation", "Variation", 1.0),
                  ("diversity", "Diversity", 1.0), ("pfd", "P-FD ↓", 1.0), ("l2_affect", "L2 Affect ×1e2 ↓", 100.0)]


@dataclass
class DemoConfig:
    """Data and sizes of the demo run. ``quick()`` is the CI-sized variant (~3 min on 2 cores)."""
    seed: int = 0                # training seeds, and the synthetic corpus's seed
    # data: a dataset directory, or a synthetic corpus variant (data.synthetic.CORPORA) + size overrides
    data: str | None = None
    corpus: str = "default"
    n_identities: int | None = None
    n_segments: int | None = None
    seconds: float | None = None
    # VQ-VAE (CPU-sized; the paper's sizes are VQConfig's defaults)
    vq_steps: int = 1000
    vq_batch: int = 32
    vq_width: int = 64
    vq_code_dim: int = 64
    vq_lr: float = 1e-3
    vq_crop: int = 240           # training crop in frames: the evaluation window (IN statistics; issue 13)
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


def score(preds: list[np.ndarray], clips, valence_model=None, seed: int = 0) -> dict:
    """Table 1 metrics; L2 Affect only with a ``valence_model`` (the data has valence)."""
    from .metrics import evaluate_clips
    kw = {}
    if valence_model is not None:
        kw = dict(pred_valence=[valence_model.predict(p) for p in preds], gt_valence=[c.valence for c in clips])
    return evaluate_clips(preds, [c.listener_motion for c in clips], [c.speaker_motion for c in clips],
                          fps=clips[0].fps, seed=seed, **kw)


def test_clips(segments, limit: int = 0):
    """LM-listener's evaluation clips of ``segments`` (240 frames from frame 96 on); where no segment
    is long enough for one (Learning2Listen's 64 frames), each whole segment cut to a multiple of 8."""
    from .data import lm_listener_eval_clips
    clips = [c for s in segments for c in lm_listener_eval_clips(s)]
    if not clips:
        clips = [s.window(0, s.T // 8 * 8) for s in segments if s.T >= 16]
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


@dataclass
class DemoData:
    """The splits the demo works on (validation held out of train when the source has none), the
    source's statistics and what the data supports."""
    train: list
    val: list
    test: list
    n_sa: int | None
    what: str
    coverage: object
    notes: list


def data_spec(cfg: DemoConfig) -> tuple:
    """A hashable description of the demo's data, rebuilt identically in worker processes."""
    if cfg.data:
        return ("dir", str(cfg.data))
    over = tuple((k, v) for k, v in (("n_identities", cfg.n_identities), ("n_segments", cfg.n_segments),
                                     ("seconds", cfg.seconds)) if v is not None)
    return ("synthetic", cfg.corpus, cfg.seed, over)


@functools.lru_cache(maxsize=1)
def demo_data(spec: tuple) -> DemoData:
    from .data.coverage import Coverage, with_val_split
    if spec[0] == "dir":
        from .data import load_dataset
        ds, what = load_dataset(spec[1], progress=False), f"dataset {spec[1]}"
    else:
        from .data.synthetic import named_corpus
        _, name, seed, over = spec
        ds = named_corpus(name, seed=seed, **dict(over))
        what = f"synthetic corpus {name!r} (seed {seed}" + "".join(f", {k}={v}" for k, v in over) + ")"
    for split in ("train", "test"):
        if not getattr(ds, split):
            raise ValueError(f"{what}: expected segments in the {split} split, got none")
    train, val, note = with_val_split(ds, seed=0)
    cov = Coverage.of({"train": train, "val": val, "test": ds.test})
    return DemoData(train, val, list(ds.test), getattr(ds, "n_sa", None), what, cov,
                    ([note] if note else []) + list(cov.missing))


def _vq_job(spec: tuple, preset: str, out_dir: str, kw: dict) -> str:
    """Train one VQ-VAE into ``out_dir`` (runs in a worker process; the data is rebuilt there from
    its spec, identical to the parent's)."""
    from .train_vq import train_vq
    d = demo_data(spec)
    train_vq(d.train, d.val, preset=preset, out_dir=out_dir, progress=False, log=None, **kw)
    return out_dir


def _lm_job(spec: tuple, init_dir: str | None, out_dir: str, kw: dict) -> str:
    """Train one LM stage into ``out_dir``, starting from ``init_dir`` (stage 1 result) if given."""
    from .lm import ListenerLM
    from .train_lm import train_lm
    d = demo_data(spec)
    model = ListenerLM.from_pretrained(init_dir) if init_dir else None
    codes_tr, codes_va = kw.pop("lr_codes_train", None), kw.pop("lr_codes_val", None)
    train_lm(d.train, d.val, codes_tr, codes_va, model=model, out_dir=out_dir, progress=False, log=None, **kw)
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
# the Table 4 rows: (words-only or multimodal LM, naive or disentangled VQ-VAE)
TABLE4 = {"Naive": ("W", "naive"), "MM only": ("MM", "naive"), "ID only": ("W", "disentangled"),
          "Full": ("MM", "disentangled")}
PRESET_LABEL = {"naive": "naive VQ", "disentangled": "IN/AdaIN VQ"}
#: checkpoint directory of each row's LM (a model shared by two rows lives in the first one's)
ROW_DIR = {"Naive": "lm_listener", "MM only": "lm_mm_only", "ID only": "lm_id_only", "Full": "lm_full",
           "W+SA": "lm_w_sa", "W+emo": "lm_w_emo"}


def plan_models(cov, table3: bool = False) -> tuple[dict, dict, list[str]]:
    """Which LMs the data supports: ``(rows, models, notes)``; ``rows``: Table 4 row -> model key
    (rows the data cannot fill are absent), ``models``: key ``(modalities, preset)`` -> display name,
    trained once even when two rows coincide (words-only data: MM only = Naive, Full = ID only)."""
    mm = "+".join(cov.modalities)
    presets = ["naive"] + (["disentangled"] if cov.has_beta else [])
    rows, notes = {}, []
    for row, (inp, preset) in TABLE4.items():
        mods = mm if inp == "MM" else "W"
        if mods == "W" and "W" not in cov.modalities:
            notes.append(f"Table 4 {row}: left out, the data has no words (the row's LM is words-only)")
            continue
        if preset not in presets:
            notes.append(f"Table 4 {row}: left out, the data has no listener beta for the IN/AdaIN VQ-VAE")
            continue
        rows[row] = (mods, preset)
    if mm == "W":
        notes.append("the data has words only: MM only is the same model as Naive, Full the same as ID only")
    if table3:
        if "disentangled" in presets and {"W", "SA", "emo"} <= set(cov.modalities):
            rows["W+SA"], rows["W+emo"] = ("W+SA", "disentangled"), ("W+emo", "disentangled")
        else:
            notes.append("Table 3: left out, it needs words, SA tokens, emotion and beta")
    models = {}
    for mods, preset in rows.values():
        models[(mods, preset)] = f"{mods}, {PRESET_LABEL[preset]}"
    return rows, models, notes


def _ours_key(rows: dict):
    return rows.get("Full") or rows.get("ID only") or rows.get("MM only") or rows.get("Naive")


def run_demo(cfg: DemoConfig, out_dir: str | Path = "runs/demo", progress: bool = True) -> dict:
    """Run the whole pipeline; returns (and writes) the tables as a dict."""
    from .baselines import NNFacialMotion, NNSpeechContent, RandomListener, RandomWalk, predict_all
    from .data.coverage import fit_window
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
    spec = data_spec(cfg)
    data = demo_data(spec)
    cov = data.coverage
    rows, models, plan_notes = plan_models(cov, cfg.table3)
    notes = data.notes + plan_notes
    _log(f"{data.what}: {len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test segments; " + cov.describe())
    for n in plan_notes:
        _log(f"  - {n}")
    tick("data", t0)
    all_train = data.train + data.val + data.test
    vq_window = fit_window(all_train, 240)          # evaluation window of the VQ-VAEs and the LMs
    lm_window = fit_window(data.train, cfg.lm_window)
    if vq_window < 240:
        notes.append(f"segments of at most {vq_window} frames: VQ-VAEs and LMs use {vq_window}-frame windows (not 240)")

    # ---- VQ-VAEs (Table 5); independent trainings run in `workers` processes of 1 thread each
    presets = {p: lab for p, lab in (("naive", "(∅, ∅) naive"), ("disentangled", "(IN, AdaIN) ours"))
               if p == "naive" or cov.has_beta}
    vq_kw = dict(steps=cfg.vq_steps, batch_size=cfg.vq_batch, lr=cfg.vq_lr, seed=cfg.seed, eval_every=0,
                 width=cfg.vq_width, code_dim=cfg.vq_code_dim, eval_window=vq_window,
                 crop=min(cfg.vq_crop, vq_window))
    t0 = time.perf_counter()
    _run_jobs([(_vq_job, (spec, p, str(out / f"vq_{p}"), vq_kw)) for p in presets], cfg.workers, progress)
    vq = {p: VQVAE.from_pretrained(out / f"vq_{p}").eval() for p in presets}
    table5 = {label: evaluate_vq(vq[p], data.val, window=vq_window) for p, label in presets.items()}
    tick("vq_training", t0)
    codes = {p: {s: vqvae_codes(vq[p], getattr(data, s)) for s in ("train", "val")} for p in vq}

    # ---- LMs: stage 1 per modality set, stage 2 per (modalities, VQ-VAE)
    mods = sorted({m for m, _ in models}, key=lambda m: (m != "W", m))
    lm_dir = {}
    for row, key in rows.items():
        lm_dir.setdefault(key, out / ROW_DIR[row])
    lm_kw = dict(batch_size=cfg.lm_batch, window=lm_window, lr=cfg.lm_lr, seed=cfg.seed, eval_every=0,
                 val_windows=64, n_sa=_n_sa(data), n_lr=vq["naive"].config.codebook_size,
                 backbone=dict(n_layer=cfg.lm_layers, n_embd=cfg.lm_width, n_head=cfg.lm_heads, arch=cfg.lm_arch))
    t0 = time.perf_counter()
    _run_jobs([(_lm_job, (spec, None, str(out / f"stage1_{_slug(m)}"), dict(lm_kw, stage=1, modalities=m,
                                                                          steps=cfg.stage1_steps)))
               for m in mods], cfg.workers, progress)
    tick("lm_stage1", t0)
    t0 = time.perf_counter()
    jobs = []
    # the multimodal runs are the long ones: start them first so the two workers finish together
    for m, p in sorted(models, key=lambda k: k[0] == "W"):
        kw = {k: v for k, v in lm_kw.items() if k != "backbone"}
        jobs.append((_lm_job, (spec, str(out / f"stage1_{_slug(m)}"), str(lm_dir[(m, p)]),
                               dict(kw, stage=2, steps=cfg.stage2_steps, lr_codes_train=codes[p]["train"],
                                    lr_codes_val=codes[p]["val"]))))
    _run_jobs(jobs, cfg.workers, progress)
    tick("lm_stage2", t0)
    lms = {k: ListenerLM.from_pretrained(lm_dir[k]).eval() for k in models}
    lr_acc = {k: lr_accuracy(lms[k], data.val, codes[k[1]]["val"], window=lm_window) for k in models}
    for k, acc in lr_acc.items():
        _log(f"  validation LR-token accuracy {models[k]}: {acc:.3f}")

    # ---- evaluation on the test clips
    t0 = time.perf_counter()
    clips = test_clips(data.test, cfg.max_test_clips)
    valence = None
    if cov.has_valence:
        valence = ValenceRegressor().fit([s.listener_motion for s in data.train], [s.valence for s in data.train])
    nn_window = max(c.T for c in clips)
    preds: dict[str, list[np.ndarray]] = {}
    baselines = {"Random": RandomListener(seed=cfg.seed), "NN facial motion": NNFacialMotion(window=nn_window, seed=cfg.seed)}
    if "W" in cov.modalities:
        baselines["NN speech content"] = NNSpeechContent(window=nn_window, seed=cfg.seed)
    else:
        notes.append("NN speech content: left out, the data has no words")
    for name, b in baselines.items():
        preds[name] = predict_all(b.fit(data.train), clips)
    emb = baselines["NN speech content"].embedding_name if "NN speech content" in baselines else None
    preds["Naive random walk"] = predict_all(RandomWalk(vq["naive"], seed=cfg.seed), clips)
    if "disentangled" in vq:
        preds["Ours random walk"] = predict_all(RandomWalk(vq["disentangled"], seed=cfg.seed), clips)
    gen_codes = {}
    for k in models:
        gen_codes[k], preds[models[k]] = generate_motion(lms[k], vq[k[1]], clips, cfg.decode_batch)
    results = {name: score(pr, clips, valence, cfg.seed) for name, pr in preds.items()}
    tick("evaluation", t0)

    gt = next(iter(results.values()))
    ours = _ours_key(rows)
    table1 = {"GT": {"variation": gt["variation_gt"], "diversity": gt["diversity_gt"]}}
    for name in ("Random", "NN facial motion", "NN speech content", "Naive random walk"):
        if name in results:
            table1[name] = results[name]
    if "Naive" in rows:
        table1["LM-listener (words only)"] = results[models[rows["Naive"]]]
    if "Ours random walk" in results:
        table1["Ours random walk"] = results["Ours random walk"]
    table1["Ours"] = results[models[ours]]
    notes.append(f"Ours = the LM on {models[ours]}")
    table4 = {row: {**results[models[k]], "lr_acc": lr_acc[k]} for row, k in rows.items() if row in TABLE4}
    table3 = None
    if "W+SA" in rows:
        table3 = {m: {**results[models[k]], "lr_acc": lr_acc[k]} for m, k in
                  (("W", rows["ID only"]), ("W+SA+emo", rows["Full"]), ("W+SA", rows["W+SA"]), ("W+emo", rows["W+emo"]))}

    # ---- plots: one test clip, and one response rendered with two identities
    k = int(np.argmax([np.var(c.listener_motion[:, :50], 0).sum() for c in clips]))
    series = {"GT": clips[k].listener_motion, "Ours": preds[models[ours]][k]}
    if "Naive" in rows and rows["Naive"] != ours:
        series["LM-listener"] = preds[models[rows["Naive"]]][k]
    swap = None
    if ours[1] == "disentangled":
        other = _other_beta(all_train, clips[k].listener_beta)
        if other is not None:
            c_ours = torch.as_tensor(gen_codes[ours][k])[None]
            with torch.no_grad():
                m_other = vq["disentangled"].decode(c_ours, torch.as_tensor(other)[None])[0].numpy()
            swap = ((clips[k].listener_id, preds[models[ours]][k]), ("another beta", m_other))
    plots = save_plots(out, clips[k], series, swap)

    # ---- report
    timings["total"] = round(time.perf_counter() - t_all, 1)
    cols = [c for c in METRIC_COLUMNS if valence is not None or c[0] != "l2_affect"]
    cols4 = [c for c in cols if c[0] not in ("variation", "diversity")] + [("lr_acc", "val LR acc ↑", 1.0)]
    cols5 = [("rec", "Rec ↓", 1.0), ("commit", "Commit ↓", 1.0), ("ppl", "PPL ↑", 1.0), ("rec_swap", "Rec, swapped beta", 1.0)]
    md = [f"# minilisten demo ({data.what}, seed {cfg.seed})", "",
          f"{len(clips)} test clips (LM-listener's evaluation windows of the test split)"
          + (f"; NN speech content uses {emb}" if emb else "")
          + ("; L2 Affect compares valence predicted from motion by a ridge regressor fitted on the training "
             "split (`minilisten.metrics.ValenceRegressor`)" if valence is not None else "") + ".", ""]
    if notes:
        md += ["What the data lacks, and what was left out because of it:", ""] + [f"- {n}" for n in notes] + [""]
    md += [markdown_table(table1, cols, "Table 1 — baselines and ours"), "",
           markdown_table(table4, cols4, "Table 4 — ablation (multimodal LM, identity-disentangled VQ-VAE)"), ""]
    if table3 is not None:
        md += [markdown_table(table3, cols4, "Table 3 — speaker modalities (IN/AdaIN VQ-VAE)"), ""]
    md += [markdown_table(table5, cols5, "Table 5 — VQ-VAE normalization (validation split)"), "",
           "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    text = "\n".join(md)
    report = {"config": asdict(cfg), "data": data.what, "coverage": cov.describe(), "notes": notes,
              "table1": table1, "table3": table3, "table4": table4, "table5": table5,
              "lr_accuracy": {models[k]: v for k, v in lr_acc.items()}, "all_results": results, "timings_s": timings,
              "plots": plots, "nn_speech_embedding": emb, "n_test_clips": len(clips),
              "versions": {"torch": torch.__version__, "python": platform.python_version(),
                           "machine": platform.machine(), "cpu": _cpu_name(), "threads": torch.get_num_threads()}}
    atomic_write_text(out / "tables.md", text + "\n")
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=float))
    _log("\n" + text)
    _log(f"\nwrote {out / 'tables.md'}, {out / 'results.json'}" + "".join(f", {p}" for p in plots))
    return report


def _n_sa(data: DemoData) -> int:
    from .data.coverage import resolve_n_sa
    return resolve_n_sa(data, data.train + data.val + data.test)


def _other_beta(segments, beta):
    """A listener beta of ``segments`` different from ``beta`` (the most distant), or None."""
    if beta is None:
        return None
    cands = [s.listener_beta for s in segments if s.listener_beta is not None]
    d = [float(np.abs(b - beta).max()) for b in cands]
    return None if not d or max(d) < 1e-6 else cands[int(np.argmax(d))]


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _config_args(p: argparse.ArgumentParser, skip: tuple[str, ...]) -> list[str]:
    """One ``--field-name`` option per scalar field of :class:`DemoConfig` (its default: the run's)."""
    g = p.add_argument_group("sizes (DemoConfig fields; default: the full run's, or --quick's)")
    names = []
    for f in fields(DemoConfig):
        if f.name in skip:
            continue
        typ = float if "float" in str(f.type) else int if "int" in str(f.type) else str
        g.add_argument("--" + f.name.replace("_", "-"), type=typ, default=None, metavar=typ.__name__.upper())
        names.append(f.name)
    return names


def main(argv: list[str] | None = None) -> int:
    from .data.synthetic import CORPORA
    from .lm import DEFAULT_ARCHS
    p = argparse.ArgumentParser(prog="python -m minilisten demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized run (~3 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--data", metavar="DIR", help="run on this dataset directory (ours, LM-listener or Learning2Listen "
                   "layout) instead of a synthetic corpus")
    p.add_argument("--corpus", choices=list(CORPORA), default="default", help="synthetic corpus variant (default: default)")
    p.add_argument("--seed", type=int, default=0, help="training seed and synthetic corpus seed (default: 0)")
    p.add_argument("--table3", action="store_true", help="also train W+SA and W+emo LMs (paper Table 3)")
    p.add_argument("--lm-arch", choices=DEFAULT_ARCHS, default=None,
                   help="layout of the from-scratch LMs (default llama: rotary positions)")
    p.add_argument("--no-progress", action="store_true")
    names = _config_args(p, skip=("seed", "data", "corpus", "table3", "lm_arch"))
    a = p.parse_args(argv)
    over = {f: getattr(a, f) for f in names if getattr(a, f) is not None}
    over.update(seed=a.seed, table3=a.table3, data=a.data, corpus=a.corpus)
    if a.lm_arch:
        over["lm_arch"] = a.lm_arch
    cfg = DemoConfig.quick(**over) if a.quick else DemoConfig(**over)
    run_demo(cfg, a.out, progress=not a.no_progress)
    return 0


# ----------------------------------------------------------------------------- evaluate
def main_evaluate(argv: list[str] | None = None) -> int:
    from .data.cli import add_data_args, load_data
    p = argparse.ArgumentParser(prog="python -m minilisten evaluate",
                                description="Evaluate saved VQ-VAE + LM checkpoints on a dataset's test split "
                                            "(Table 1 metrics, with the Random and NN baselines for reference).")
    p.add_argument("--vq", required=True, help="VQ-VAE checkpoint directory")
    p.add_argument("--lm", required=True, help="ListenerLM checkpoint directory")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines and the diversity pairs")
    p.add_argument("--max-clips", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", help="write results JSON here")
    add_data_args(p)
    a = p.parse_args(argv)
    from .baselines import NNFacialMotion, RandomListener, predict_all
    from .data.coverage import Coverage
    from .lm import ListenerLM
    from .metrics import ValenceRegressor
    from .vqvae import VQVAE

    ds, what = load_data(a)
    segs = getattr(ds, a.split)
    if not segs:
        raise ValueError(f"--split {a.split}: {what} has no segments in that split")
    vq, lm = VQVAE.from_pretrained(a.vq).eval(), ListenerLM.from_pretrained(a.lm).eval()
    cov = Coverage.of({"train": ds.train, a.split: segs})
    lacking = [m for m in lm.modalities if m not in cov.modalities]
    if lacking:
        raise ValueError(f"--lm {a.lm}: the LM needs speaker modalities {'+'.join(lm.modalities)}, {what} has "
                         f"{'+'.join(cov.modalities) or 'none'} (missing {', '.join(lacking)})")
    if vq.needs_beta and not cov.has_beta:
        raise ValueError(f"--vq {a.vq}: this VQ-VAE (dec_norm={vq.config.dec_norm!r}) decodes with the listener's shape "
                         f"beta (100,), {what} has none; use a naive VQ-VAE")
    print(f"{what}: " + cov.describe())
    clips = test_clips(segs, a.max_clips)
    if not clips:
        raise ValueError(f"--split {a.split}: expected segments of >= 16 frames to evaluate, got none")
    valence = ValenceRegressor().fit([s.listener_motion for s in ds.train], [s.valence for s in ds.train]) \
        if cov.has_valence else None
    nn_window = max(c.T for c in clips)
    preds = {"Random": predict_all(RandomListener(seed=a.seed).fit(ds.train), clips),
             "NN facial motion": predict_all(NNFacialMotion(window=nn_window, seed=a.seed).fit(ds.train), clips)}
    preds["model"] = generate_motion(lm, vq, clips, a.batch)[1]
    rows = {name: score(pr, clips, valence, a.seed) for name, pr in preds.items()}
    rows = {"GT": {"variation": rows["model"]["variation_gt"], "diversity": rows["model"]["diversity_gt"]}, **rows}
    cols = [c for c in METRIC_COLUMNS if valence is not None or c[0] != "l2_affect"]
    print(markdown_table(rows, cols, f"{len(clips)} clips of split {a.split}"))
    if valence is None:
        print("L2 Affect: left out, the data has no valence")
    if a.out:
        atomic_write_text(a.out, json.dumps(rows, indent=2, default=float))
    return 0
