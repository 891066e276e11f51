"""The library's end-to-end steps, from a data source to the paper's tables (no Markdown, plots
or command line: those are :mod:`minilisten.report` and :mod:`minilisten.demo`).

:func:`run_pipeline`, on a synthetic corpus or a dataset directory (:class:`DemoConfig`):

1. load or generate the data and say what it lacks (:class:`~minilisten.data.coverage.Coverage`);
2. train the naive (∅, ∅) and, when the data has beta, the identity-disentangled (IN, AdaIN)
   VQ-VAE -> Table 5;
3. tokenize the listener motion with both (LR codes);
4. LM stage 1 (speaker tokens only) for words-only (W) and multimodal (all modalities the data
   has) speaker input, then stage 2 on each VQ-VAE's codes: LM-listener = W on naive, MM only =
   multimodal on naive, ID only = W on disentangled, Full = multimodal on disentangled (Table 4);
   with ``table3`` also W+SA and W+emo on the disentangled codes (Table 3). A row whose inputs
   the data cannot supply is left out, and the notes say why, once;
5. greedy-decode the test clips (LM-listener's evaluation clips) with the fast static-cache
   decoder and decode the LR codes with each clip's listener beta (:func:`generate_motion`);
6. score every model and baseline (Random, NN facial motion, NN speech content, Naive / Ours
   random walk) with the paper's metrics -> Table 1.

Independent trainings run in ``workers`` processes of one thread each; the data is rebuilt in each
from :func:`data_spec`, identical to the parent's.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data.source import OVERRIDES, open_data


def _log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class DemoConfig:
    """Data and sizes of one pipeline run (the demo's). ``quick()`` is the CI-sized variant (~3 min on 2 cores)."""
    seed: int = 0                # training seeds, and the synthetic corpus's seed
    # data: a dataset directory, or a synthetic corpus variant (data.synthetic.CORPORA) + size overrides
    data: str | None = None
    corpus: str = "default"
    n_identities: int | None = None
    n_segments: int | None = None
    seconds: float | None = None
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

    @classmethod
    def quick(cls, **kw) -> "DemoConfig":
        return cls(**{**QUICK, **kw})


#: the CI-sized run's fields (``DemoConfig.quick()``, ``demo --quick``)
QUICK = dict(n_identities=4, n_segments=40, seconds=32.0, vq_steps=150, vq_batch=16, vq_width=64, vq_code_dim=64,
             lm_layers=2, lm_width=96, lm_heads=4, lm_window=240, stage1_steps=20, stage2_steps=60, lm_batch=8,
             max_test_clips=12, arig_steps=30, video_ssaa=1)


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
    """A hashable description of the run's data, rebuilt identically in worker processes."""
    if cfg.data:
        return ("dir", str(cfg.data))
    over = tuple((k, getattr(cfg, k)) for k in OVERRIDES if getattr(cfg, k) is not None)
    return ("synthetic", cfg.corpus, cfg.seed, over)


@functools.lru_cache(maxsize=1)
def demo_data(spec: tuple) -> DemoData:
    """The splits of ``spec`` (:func:`data_spec`), a validation split held out of train when the
    source has none, and its :class:`~minilisten.data.coverage.Coverage`."""
    from .data.coverage import Coverage, with_val_split
    if spec[0] == "dir":
        ds, what = open_data(spec[1], progress=False)
    else:
        _, name, seed, over = spec
        ds, what = open_data(None, name, seed, **dict(over))
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


def _arig_job(spec: tuple, out_dir: str, kw: dict) -> str:
    """Train the ARIG-style continuous listener (:mod:`minilisten.arig`) into ``out_dir``."""
    from .train_arig import train_arig
    d = demo_data(spec)
    train_arig(d.train, d.val, out_dir=out_dir, n_sa=_n_sa(d), log=None, progress=False, **kw)
    return out_dir


def _init_worker():
    torch.set_num_threads(1)


def _run_jobs(jobs: list, workers: int, progress: bool = True) -> list:
    """Run ``(fn, args)`` jobs in ``workers`` processes (1 thread each; 1 = in this process)."""
    from tqdm.auto import tqdm
    names = [Path(args[-2]).name for _, args in jobs]   # every job's args end with (out_dir, kw)
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


# the Table 4 rows: (words-only or multimodal LM, naive or disentangled VQ-VAE)
TABLE4 = {"Naive": ("W", "naive"), "MM only": ("MM", "naive"), "ID only": ("W", "disentangled"),
          "Full": ("MM", "disentangled")}
#: Table 1 row of the ARIG-style continuous listener (Guo et al., ICCV 2025; not in Lai et al.'s tables)
ARIG_ROW = "ARIG-style (continuous)"
#: the appendix's ablations: Table 1 name -> (checkpoint directory, ARIGConfig fields)
ARIG_ABLATIONS = {"ARIG w/o diffusion head": ("arig_regression", {"head": "regression"}),
                  "ARIG w/o bidirectional-integrated learning": ("arig_linear", {"ibu": "linear"})}
ARIG_ABLATION_LABEL = {ARIG_ROW: "Full (diffusion head, bidirectional-integrated learning)",
                       "ARIG w/o diffusion head": "w/o diffusion head (regression head)",
                       "ARIG w/o bidirectional-integrated learning": "w/o bidirectional-integrated learning (linear layers)"}
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


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` produced. ``tables``: Table 1/3/4/5 rows (name -> metrics dict;
    ``table3`` None unless asked and possible); ``preds``: method -> motion ``(T, 56)`` per clip;
    ``models``: LM key ``(modalities, preset)`` -> display name; ``rows``: Table 4 row -> LM key."""
    cfg: DemoConfig
    data: DemoData
    out: Path
    clips: list
    rows: dict
    models: dict
    vq: dict
    lms: dict
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
    arig_ablation: dict | None = None
    nn_speech_embedding: str | None = None
    all_train: list = field(default_factory=list)

    @property
    def ours(self) -> tuple:
        """The LM key reported as Ours (Full, else the best-equipped row the data allows)."""
        return _ours_key(self.rows)


def run_pipeline(cfg: DemoConfig, out_dir: str | Path = "runs/demo", progress: bool = True) -> PipelineResult:
    """Train and evaluate everything (steps 1-6 above); checkpoints go to ``out_dir``."""
    from .baselines import NNFacialMotion, NNSpeechContent, RandomListener, RandomWalk, predict_all
    from .data.coverage import fit_window
    from .lm import ListenerLM
    from .metrics import ValenceRegressor
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
    vq_kw = dict(steps=cfg.vq_steps, batch_size=cfg.vq_batch, learning_rate=cfg.vq_learning_rate, seed=cfg.seed, eval_every=0,
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
    lm_kw = dict(batch_size=cfg.lm_batch, window=lm_window, learning_rate=cfg.lm_learning_rate, seed=cfg.seed, eval_every=0,
                 val_windows=64, n_sa=_n_sa(data), n_lr=vq["naive"].config.codebook_size,
                 backbone=dict(n_layer=cfg.lm_layers, n_embd=cfg.lm_width, n_head=cfg.lm_heads, arch=cfg.lm_arch))
    t0 = time.perf_counter()
    _run_jobs([(_lm_job, (spec, None, str(out / f"stage1_{_slug(m)}"), dict(lm_kw, stage=1, modalities=m,
                                                                          steps=cfg.stage1_steps)))
               for m in mods], cfg.workers, progress)
    tick("lm_stage1", t0)
    t0 = time.perf_counter()
    jobs = []
    arig_runs = {ARIG_ROW: ("arig", {})} if cfg.arig_steps else {}
    if cfg.arig_steps and cfg.arig_ablation:
        arig_runs.update(ARIG_ABLATIONS)
    for name, (sub, model_config) in arig_runs.items():   # the longest jobs first: the workers finish together
        jobs.append((_arig_job, (spec, str(out / sub), dict(model_config=model_config, steps=cfg.arig_steps,
                                                           seed=cfg.seed, eval_every=0))))
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
    if arig_runs:
        from .arig import ARIG, arig_generate
        for name, (sub, _) in arig_runs.items():
            preds[name] = arig_generate(ARIG.from_pretrained(out / sub), clips, seed=cfg.seed)
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
    if ARIG_ROW in results:
        table1[ARIG_ROW] = results[ARIG_ROW]
    notes.append(f"Ours = the LM on {models[ours]}")
    table4 = {row: {**results[models[k]], "lr_acc": lr_acc[k]} for row, k in rows.items() if row in TABLE4}
    arig_ablation = None
    if len(arig_runs) > 1:
        arig_ablation = {ARIG_ABLATION_LABEL.get(name, name): results[name] for name in arig_runs}
    table3 = None
    if "W+SA" in rows:
        table3 = {m: {**results[models[k]], "lr_acc": lr_acc[k]} for m, k in
                  (("W", rows["ID only"]), ("W+SA+emo", rows["Full"]), ("W+SA", rows["W+SA"]), ("W+emo", rows["W+emo"]))}
    timings["total"] = round(time.perf_counter() - t_all, 1)
    return PipelineResult(cfg=cfg, data=data, out=out, clips=clips, rows=rows, models=models, vq=vq, lms=lms,
                          preds=preds, gen_codes=gen_codes, results=results, lr_acc=lr_acc, table1=table1,
                          table3=table3, table4=table4, table5=table5, notes=notes, timings=timings,
                          has_valence=valence is not None, arig_ablation=arig_ablation, nn_speech_embedding=emb, all_train=all_train)


def identity_swap(res: PipelineResult, k: int):
    """Ours' LR codes of clip ``k`` decoded with the clip's beta and with the most distant other
    listener beta: ``((id, motion (T, 56)), ("another beta", motion (T, 56)))``, or None (naive
    VQ-VAE, or one identity only)."""
    ours = res.ours
    if ours[1] != "disentangled":
        return None
    clip = res.clips[k]
    other = _other_beta(res.all_train, clip.listener_beta)
    if other is None:
        return None
    c_ours = torch.as_tensor(res.gen_codes[ours][k])[None]
    with torch.no_grad():
        m_other = res.vq["disentangled"].decode(c_ours, torch.as_tensor(other)[None])[0].numpy()
    return ((clip.listener_id, res.preds[res.models[ours]][k]), ("another beta", m_other))


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


