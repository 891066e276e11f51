"""The library's end-to-end run, from data to the paper's tables (:mod:`minilisten.demo` reports them):
:func:`run_pipeline` trains the naive and (with beta) IN/AdaIN VQ-VAEs (Table 5), LM stage 1 per speaker-modality
set and stage 2 per (modalities, VQ-VAE) (Tables 4, 3), the ARIG-style listener, and evaluates them with the baselines
(Table 1) on the test clips. Rows the data cannot fill are left out with a note; trainings run in spawned workers."""
from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .data.cli import DataConfig, load_data
from .data.coverage import Coverage, fit_window, resolve_n_sa, with_val_split
from .data.formats import Corpus
from .data.windows import test_clips
from .errors import UserError
from .generate import generate_motion
from .metrics import evaluate


@dataclass
class DemoConfig:
    """Data and sizes of one pipeline run (the demo's). ``quick()`` is the CI-sized variant (~3 min on 2 cores)."""
    seed: int = 0                # training seeds (the synthetic corpus has its own: data.corpus_seed)
    data: DataConfig = field(default_factory=DataConfig)
    # VQ-VAE (CPU-sized; the paper's sizes are VQConfig's defaults)
    vq_steps: int = 1000         # VQ-VAE training steps (each of the two)
    vq_batch: int = 32           # VQ-VAE batch (windows)
    vq_width: int = 64           # VQ-VAE channels (paper: 512)
    vq_code_dim: int = 64        # codebook vector size d (paper: 512)
    vq_learning_rate: float = 1e-3   # VQ-VAE learning rate
    vq_crop: int = 240           # training crop in frames: the evaluation window (IN statistics; issue 13)
    # LM (small LM from scratch, LLaMA layout = rotary positions, see lm.default_backbone; paper: GPT-2 Medium)
    lm_arch: str = "llama"        # layout of the from-scratch LMs (llama: rotary positions)
    lm_layers: int = 2           # LM layers
    lm_width: int = 128          # LM width
    lm_heads: int = 4            # LM attention heads
    lm_window: int = 240         # LM training window in frames (30 LR steps, as evaluated)
    stage1_steps: int = 150      # LM stage 1 steps (speaker tokens only)
    stage2_steps: int = 800      # LM stage 2 steps (with LR tokens)
    lm_batch: int = 8            # LM batch (windows)
    lm_learning_rate: float = 1e-3   # LM learning rate
    table3: bool = False         # also train W+SA and W+emo LMs (paper Table 3)
    decode_batch: int = 16       # clips per greedy decoding batch
    max_test_clips: int = 128    # 0 = all of LM-listener's clips of the test split (256 by default)
    workers: int = min(2, os.cpu_count() or 1)   # parallel training processes (1 thread each)
    arig_steps: int = 300        # the ARIG-style continuous listener (0 = leave it out)
    arig_ablation: bool = True   # also train its two ablations (regression head; linear instead of IBU)
    video: bool = True           # render one test clip to clip.mp4 (minilisten.render)
    video_ssaa: int = 2          # its supersampling (1 = ~4x cheaper)
    samples: int = 0             # also the REACT table of this many sampled reactions per clip (0: none)

    @classmethod
    def quick(cls, **kw) -> "DemoConfig":
        """The CI-sized run; a synthetic corpus gets the :data:`QUICK_DATA` sizes it does not set."""
        cfg = cls(**{**QUICK, **kw})
        if cfg.data.data is None:
            sizes = {k: v for k, v in QUICK_DATA.items() if getattr(cfg.data, k) is None}
            cfg = replace(cfg, data=replace(cfg.data, **sizes))
        return cfg


#: the CI-sized run's fields (``DemoConfig.quick()``, ``demo --quick``) and synthetic corpus sizes
QUICK = dict(vq_steps=150, vq_batch=16, vq_width=64, vq_code_dim=64, lm_layers=2, lm_width=96, lm_heads=4,
             lm_window=240, stage1_steps=20, stage2_steps=60, lm_batch=8, max_test_clips=12, video_ssaa=1)
QUICK_DATA = dict(n_identities=4, n_segments=40, seconds=32.0)


@dataclass
class DemoData(Corpus):
    """The run's :class:`~minilisten.data.formats.Corpus` (validation held out of train when the source has none;
    ``n_sa`` None: unknown) with the source's description, its :class:`~minilisten.data.coverage.Coverage` and
    notes."""
    what: str = ""
    coverage: Coverage | None = None
    notes: list = field(default_factory=list)

    @property
    def n_sa_lm(self) -> int:
        return resolve_n_sa(self, self.train + self.val + self.test)


@functools.lru_cache(maxsize=1)
def demo_data(data: DataConfig, units_dir: str | None = None, fit_units: bool = False) -> DemoData:
    """The splits of ``data``; speaker mel without SA tokens becomes SA tokens through ``speaker.MelUnits`` fitted
    on the train split and saved in ``units_dir`` (``fit_units``) or loaded from it (worker processes)."""
    ds, what = load_data(data, progress=False)
    for split in ("train", "test"):
        if not getattr(ds, split):
            raise UserError(f"{what}: expected segments in the {split} split, got none")
    train, val, note = with_val_split(ds, seed=0)
    splits = {"train": train, "val": val, "test": list(ds.test)}
    notes, n_sa = [note] if note else [], getattr(ds, "n_sa", None)
    if units_dir and all(getattr(s, "mel", None) is not None and s.sa_tokens is None
                         for v in splits.values() for s in v):
        from .speaker import MelUnits
        if fit_units:
            units = MelUnits.fit([s.mel for s in splits["train"]], seed=0)
            units.save(Path(units_dir))
        else:
            units = MelUnits.load(Path(units_dir))
        splits = {k: [s.replace(sa_tokens=units.tokens(s.mel, s.fps)) for s in v] for k, v in splits.items()}
        n_sa = units.k
        notes.append(f"speaker mel, no SA tokens: SA tokens are acoustic units (speaker.MelUnits, k-means over mel "
                     f"frames) fitted on the train split, saved in {units_dir}")
    cov = Coverage.of(splits)
    return DemoData(**splits, fps=ds.fps, n_sa=n_sa, info=ds.info, what=what, coverage=cov,
                    notes=notes + list(cov.missing))


def _train(job: tuple) -> None:
    """Train one model of ``job = (source, kind, out_dir, kw)`` (``kind``: vq, lm or arig); in a worker process the
    data is rebuilt from ``source``, identical to the parent's. An LM stage starts from ``kw["init_dir"]``."""
    source, kind, out_dir, kw = job
    from .lm import ListenerLM
    from .train_arig import train_arig
    from .train_lm import train_lm
    from .train_vq import train_vq
    d, kw = demo_data(*source), dict(kw, out_dir=out_dir, progress=False, log=None)
    if kind == "vq":
        train_vq(d.train, d.val, **kw)
    elif kind == "arig":
        train_arig(d.train, d.val, n_sa=d.n_sa_lm, **kw)
    else:
        init = kw.pop("init_dir", None)
        train_lm(d.train, d.val, model=ListenerLM.from_pretrained(init) if init else None, **kw)


def _run_jobs(jobs: list, workers: int, progress: bool = True) -> None:
    """Run :func:`_train` jobs ``(source, kind, out_dir, kw)`` in ``workers`` spawned processes of 1 thread each
    (1 = in this process)."""
    from tqdm.auto import tqdm
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=torch.set_num_threads,
                               initargs=(1,)) if workers > 1 else contextlib.nullcontext()
    with pool as ex:
        done = ex.map(_train, jobs) if ex else map(_train, jobs)
        list(tqdm(done, total=len(jobs), desc="training " + ", ".join(Path(j[2]).name for j in jobs),
                  disable=not progress, dynamic_ncols=True))


#: the Table 4 rows: (words-only or multimodal LM, naive or disentangled VQ-VAE)
TABLE4 = {"Naive": ("W", "naive"), "MM only": ("MM", "naive"), "ID only": ("W", "disentangled"),
          "Full": ("MM", "disentangled")}
#: Table 1 row of the ARIG-style continuous listener (Guo et al., ICCV 2025; not in Lai et al.'s tables)
ARIG_ROW = "ARIG-style (continuous)"
#: the ARIG-style runs: Table 1 name -> (checkpoint directory, ARIGConfig fields, row of the appendix's ablation)
ARIG_RUNS = {
    ARIG_ROW: ("arig", {}, "Full (diffusion head, bidirectional-integrated learning)"),
    "ARIG w/o diffusion head": ("arig_regression", {"head": "regression"}, "w/o diffusion head (regression head)"),
    "ARIG w/o bidirectional-integrated learning": ("arig_linear", {"ibu": "linear"},
                                                   "w/o bidirectional-integrated learning (linear layers)")}
PRESET_LABEL = {"naive": "naive VQ", "disentangled": "IN/AdaIN VQ"}
#: checkpoint directory of each row's LM (a model shared by two rows lives in the first one's)
ROW_DIR = {"Naive": "lm_listener", "MM only": "lm_mm_only", "ID only": "lm_id_only", "Full": "lm_full",
           "W+SA": "lm_w_sa", "W+emo": "lm_w_emo"}


def plan_models(cov: Coverage, table3: bool = False) -> tuple[dict, dict, list[str]]:
    """Which LMs the data supports: ``(rows, models, notes)``; ``rows``: Table 4 (and 3) row -> model key
    ``(modalities, preset)``, ``models``: key -> display name (trained once when rows coincide)."""
    mm = "+".join(cov.modalities)
    if not mm:
        return {}, {}, ["no speaker modality: every LM row (Tables 3, 4 and Ours) is left out"]
    rows, notes = {}, []
    for row, (inp, preset) in TABLE4.items():
        mods = mm if inp == "MM" else "W"
        if mods == "W" and "W" not in cov.modalities:
            notes.append(f"Table 4 {row}: left out, the data has no words (the row's LM is words-only)")
        elif preset == "disentangled" and not cov.has_beta:
            notes.append(f"Table 4 {row}: left out, the data has no listener beta for the IN/AdaIN VQ-VAE")
        else:
            rows[row] = (mods, preset)
    if mm == "W":
        notes.append("the data has words only: MM only is the same model as Naive, Full the same as ID only")
    if table3:
        if cov.has_beta and {"W", "SA", "emo"} <= set(cov.modalities):
            rows["W+SA"], rows["W+emo"] = ("W+SA", "disentangled"), ("W+emo", "disentangled")
        else:
            notes.append("Table 3: left out, it needs words, SA tokens, emotion and beta")
    return rows, {key: f"{key[0]}, {PRESET_LABEL[key[1]]}" for key in rows.values()}, notes


def baselines(train, clips, seed: int = 0, speech: bool = True) -> tuple[dict[str, list[np.ndarray]], str | None]:
    """Predictions per clip of the Random and nearest-neighbour baselines (NN speech content when ``speech``) and
    the name of NN speech content's text embedding (None without it)."""
    from .baselines import NNFacialMotion, NNSpeechContent, RandomListener, predict_all
    window = max(c.T for c in clips)
    models = {"Random": RandomListener(seed=seed), "NN facial motion": NNFacialMotion(window=window, seed=seed)}
    if speech:
        models["NN speech content"] = NNSpeechContent(window=window, seed=seed)
    preds = {name: predict_all(b.fit(train), clips) for name, b in models.items()}
    return preds, models["NN speech content"].embedding_name if speech else None


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` produced: Table 1/3/4/5 rows (name -> metrics; ``table3`` None unless asked and
    possible), ``preds``: method -> motion ``(T, 56)`` per clip, ``models``: LM key -> display name, ``rows``:
    Table 4 row -> LM key, ``ours``: the LM key reported as Ours (Full, else the best-equipped row)."""
    cfg: DemoConfig
    data: DemoData
    out: Path
    clips: list
    rows: dict
    models: dict
    vq: dict
    preds: dict
    gen_codes: dict
    results: dict
    lr_acc: dict
    table1: dict
    table3: dict | None
    table4: dict
    table5: dict
    notes: list
    timings: dict
    has_valence: bool
    ours: tuple
    arig_ablation: dict | None
    nn_speech_embedding: str | None


def run_pipeline(cfg: DemoConfig, out_dir: str | Path = "runs/demo", progress: bool = True) -> PipelineResult:
    """Train and evaluate everything (module docstring); checkpoints go to ``out_dir``."""
    from .arig import ARIG, arig_generate
    from .baselines import RandomWalk, predict_all
    from .lm import ListenerLM
    from .train_lm import evaluate_lm, vqvae_codes
    from .train_vq import evaluate_vq
    from .vqvae import VQVAE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    timings, stamps = {}, [time.perf_counter()]

    def tick(name):   # the stages' times add up to the total
        stamps.append(time.perf_counter())
        timings[name] = round(stamps[-1] - stamps[-2], 1)
        print(f"[{name}: {timings[name]:.0f} s]", flush=True)

    source = (cfg.data, str(out / "mel_units"))
    data = demo_data(*source, fit_units=True)
    cov = data.coverage
    rows, models, plan_notes = plan_models(cov, cfg.table3)
    notes = data.notes + plan_notes
    print(f"{data.what}: {len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test segments; "
          + cov.describe() + "".join(f"\n  - {n}" for n in plan_notes), flush=True)
    tick("data")
    vq_window, lm_window = (min(fit_window(data.train, w), fit_window(data.val, w)) for w in (240, cfg.lm_window))
    if min(vq_window, lm_window) < 240:   # windows that train and validation segments both hold
        notes.append(f"segments shorter than 240 frames: VQ-VAEs and LMs use "
                     f"{'/'.join(map(str, sorted({vq_window, lm_window})))}-frame windows (not 240)")
    presets = {"naive": "(∅, ∅) naive", **({"disentangled": "(IN, AdaIN) ours"} if cov.has_beta else {})}
    vq_kw = dict(steps=cfg.vq_steps, batch_size=cfg.vq_batch, learning_rate=cfg.vq_learning_rate, seed=cfg.seed,
                 eval_every=0, width=cfg.vq_width, code_dim=cfg.vq_code_dim, eval_window=vq_window,
                 crop=min(cfg.vq_crop, vq_window))
    _run_jobs([(source, "vq", str(out / f"vq_{p}"), dict(vq_kw, preset=p)) for p in presets], cfg.workers, progress)
    vq = {p: VQVAE.from_pretrained(out / f"vq_{p}").eval() for p in presets}
    table5 = {label: evaluate_vq(vq[p], data.val, window=vq_window) for p, label in presets.items()}
    tick("vq_training")
    codes = {p: {f"lr_codes_{s}": vqvae_codes(vq[p], getattr(data, s)) for s in ("train", "val")} for p in vq}
    mods = sorted({m for m, _ in models}, key=lambda m: (m != "W", m))
    lm_dir = {key: out / ROW_DIR[row] for row, key in reversed(rows.items())}   # a shared model: the first row's
    stage1 = {m: str(out / f"stage1_{m.replace('+', '_').lower()}") for m in mods}
    lm_kw = dict(batch_size=cfg.lm_batch, window=lm_window, learning_rate=cfg.lm_learning_rate, seed=cfg.seed,
                 eval_every=0, val_windows=64, n_sa=data.n_sa_lm, n_lr=vq["naive"].config.codebook_size)
    backbone = dict(n_layer=cfg.lm_layers, n_embd=cfg.lm_width, n_head=cfg.lm_heads, arch=cfg.lm_arch)
    s1_kw = dict(lm_kw, backbone=backbone, stage=1, steps=cfg.stage1_steps)
    _run_jobs([(source, "lm", stage1[m], dict(s1_kw, modalities=m)) for m in mods], cfg.workers, progress)
    tick("lm_stage1")
    arig_runs = {k: v for k, v in ARIG_RUNS.items() if cfg.arig_steps and (cfg.arig_ablation or k == ARIG_ROW)}
    if arig_runs and cfg.arig_steps < DemoConfig.arig_steps:   # measured: at 30 steps its rollouts are still wild
        notes.append(f"ARIG-style: {cfg.arig_steps} training steps (the full run trains {DemoConfig.arig_steps}): an "
                     "under-trained model, not a result (docs/arig.md)")
    # the longest jobs first (ARIG, then the multimodal LMs), so that the workers finish together
    jobs = [(source, "arig", str(out / sub), dict(model_config=mc, steps=cfg.arig_steps, seed=cfg.seed,
                                                   eval_every=0)) for sub, mc, _ in arig_runs.values()]
    s2_keys = sorted(models, key=lambda k: k[0] == "W")
    jobs += [(source, "lm", str(lm_dir[(m, p)]), dict(lm_kw, init_dir=stage1[m], stage=2, steps=cfg.stage2_steps,
                                                      **codes[p])) for m, p in s2_keys]
    _run_jobs(jobs, cfg.workers, progress)
    tick("lm_stage2")
    lms = {k: ListenerLM.from_pretrained(lm_dir[k]).eval() for k in models}
    lr_acc = {k: evaluate_lm(lms[k], data.val, codes[k[1]]["lr_codes_val"], window=lm_window)["acc"] for k in models}
    for k, acc in lr_acc.items():
        print(f"  validation LR-token accuracy {models[k]}: {acc:.3f}", flush=True)
    clips = test_clips(data.test, cfg.max_test_clips)
    preds, emb = baselines(data.train, clips, cfg.seed, speech="W" in cov.modalities)
    if "W" not in cov.modalities:
        notes.append("NN speech content: left out, the data has no words")
    preds["Naive random walk"] = predict_all(RandomWalk(vq["naive"], seed=cfg.seed), clips)
    if "disentangled" in vq:
        preds["Ours random walk"] = predict_all(RandomWalk(vq["disentangled"], seed=cfg.seed), clips)
    gen_codes = {}
    for k in models:
        gen_codes[k], preds[models[k]] = generate_motion(lms[k], vq[k[1]], clips, cfg.decode_batch)
    for name, (sub, _, _) in arig_runs.items():
        arig = ARIG.from_pretrained(out / sub)
        preds[name] = arig_generate(arig, clips, seed=cfg.seed)
        if arig.config.head == "diffusion":
            notes.append(f"{name}: sampling temperature {arig.config.temperature:g}, chosen on the validation split")
    results = evaluate(preds, clips, data.train, cfg.seed)
    tick("evaluation")

    gt = next(iter(results.values()))
    ours = next(rows[r] for r in ("Full", "ID only", "MM only", "Naive") if r in rows)   # MM only at least
    notes.append(f"Ours = the LM on {models[ours]}")
    rows1 = {**{n: n for n in ("Random", "NN facial motion", "NN speech content", "Naive random walk")},
             "LM-listener (words only)": models.get(rows.get("Naive")), "Ours random walk": "Ours random walk",
             "Ours": models[ours], ARIG_ROW: ARIG_ROW}
    table1 = {"GT": {"variation": gt["variation_gt"], "diversity": gt["diversity_gt"]},
              **{row: results[k] for row, k in rows1.items() if k in results}}
    table4 = {row: {**results[models[k]], "lr_acc": lr_acc[k]} for row, k in rows.items() if row in TABLE4}
    table3 = None if "W+SA" not in rows else {
        m: {**results[models[rows[r]]], "lr_acc": lr_acc[rows[r]]}
        for m, r in (("W", "ID only"), ("W+SA+emo", "Full"), ("W+SA", "W+SA"), ("W+emo", "W+emo"))}
    ablation = {label: results[name] for name, (_, _, label) in arig_runs.items()} if len(arig_runs) > 1 else None
    timings["total"] = round(time.perf_counter() - stamps[0], 1)
    return PipelineResult(cfg, data, out, clips, rows, models, vq, preds, gen_codes, results, lr_acc, table1, table3,
                          table4, table5, notes, timings, "l2_affect" in gt, ours, ablation, emb)


def identity_swap(res: PipelineResult, k: int):
    """Ours' LR codes of clip ``k`` decoded with the clip's beta and with the most distant other listener beta:
    ``((id, motion (T, 56)), ("another beta", motion (T, 56)))``, or None (naive VQ-VAE, or one identity only)."""
    if res.ours[1] != "disentangled":
        return None
    clip = res.clips[k]
    cands = [s.listener_beta for s in res.data.train + res.data.val + res.data.test if s.listener_beta is not None]
    dist = [float(np.abs(b - clip.listener_beta).max()) for b in cands]
    if not dist or max(dist) < 1e-6:
        return None
    c_ours = torch.as_tensor(res.gen_codes[res.ours][k])[None]
    with torch.no_grad():
        beta = torch.tensor(cands[int(np.argmax(dist))])[None]   # a copy: the segment arrays are read-only
        m_other = res.vq["disentangled"].decode(c_ours, beta)[0].numpy()
    return ((clip.listener_id, res.preds[res.models[res.ours]][k]), ("another beta", m_other))
