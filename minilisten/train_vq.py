"""Train and evaluate the listener-motion VQ-VAE (``python -m minilisten train-vq`` / ``evaluate-vq``).

Training samples random crops (default: as long as the evaluation window, 240 frames) of the
listener motion with the listener's beta; validation uses the 240-frame windows of the validation segments
(``Segment.windows(240)``, LM-listener's clip length). AdamW (0.9, 0.99); the learning rate warms
up linearly, stays at ``learning_rate`` and drops to ``final_learning_rate`` at ``decay_step`` (paper: 2e-4 for
200K steps, then 1e-5 for 100K; by default the same 2/3 : 1/3 split and /20 drop at any length).
``--paper`` selects the paper's sizes and schedule (width 512, d_c 512, batch 256, 300K steps); the
CLI's own defaults are sized for a few minutes on a 2-core CPU (width 64, d_c 64, batch 32,
crops of 240 frames, 1000 steps at learning rate 1e-3; K = 256 as the paper) and use one CPU thread: on the
shared 2-core box one thread measured ~10x faster than two (170 vs 1700 ms per step under load,
OpenMP threads spin-waiting); pass ``--threads 2`` on an idle machine. The Python defaults of
:class:`~minilisten.vqvae.VQConfig` are the paper's.

Checkpoints (``--out DIR``): ``config.json`` + ``model.safetensors`` (``VQVAE.from_pretrained``),
``train_state.*`` (optimizer, scheduler, step, RNG states) for ``--resume``, ``log.jsonl`` (one line
per validation). Everything is written atomically (:class:`~minilisten.training.TrainLoop`).

Evaluation (paper Table 5, supplement §7), on raw (de-normalised) coefficients of the windows:
``rec`` = MSE of the reconstruction, ``commit`` = MSE between encoder outputs and their codes,
``ppl`` = exp(entropy) of the code histogram over the split (LM-listener's formula), ``entropy`` in
nats (the paper's Table 5 "PPL" values, 3.4-4.0, are in this range: ln 256 = 5.55), ``used`` =
distinct codes, ``rec_swap`` = MSE when decoding every window with another identity's beta
(identity swap), ``rec_mean`` = MSE of the dataset-mean predictor (the floor to beat),
``rec_clip_mean`` = MSE of predicting each window's own mean (an oracle that knows the clip's
static offset but none of its motion).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .cli_config import ArgumentParser, add_dataclass_args, dataclass_kwargs
from .data.cli import add_data_args, load_data
from .data.coverage import identity_groups
from .data.segment import N_SHAPE
from .data.windows import motion_stats
from .metrics import perplexity, vq_commit, vq_rec
from .training import TrainLoop, append_jsonl, renamed_kwargs, step_decay
from .vqvae import DEC_NORMS, ENC_NORMS, PRESETS, VQVAE, VQConfig

# crop None = the evaluation window (240): instance norm takes its statistics over the whole input, so
# an IN/AdaIN model trained on short crops sees other statistics at 240 frames (issue 13; README Table 5)


# ----------------------------------------------------------------------------- data
def _beta_of(seg, needs_beta: bool) -> np.ndarray:
    if seg.listener_beta is None:
        if needs_beta:
            raise ValueError(f"segment {seg.name!r}: listener_beta is None but this VQ-VAE's decoder needs the "
                             "listener's shape beta (100,); use the naive preset for data without beta")
        return np.zeros(N_SHAPE, np.float32)
    return seg.listener_beta


class CropSampler:
    """Random crops of ``crop`` frames of the listener motion: ``sample(B) -> (motion (B, crop, 56),
    beta (B, 100))``; each valid start of every segment is equally likely."""

    def __init__(self, segments, crop: int, needs_beta: bool, rng: np.random.Generator):
        usable = [s for s in segments if s.T >= crop]
        if not usable:
            raise ValueError(f"train segments: expected at least one segment with >= crop={crop} frames, "
                             f"got lengths {sorted({s.T for s in segments})[:5]}")
        self.crop, self.rng = crop, rng
        self.motion = np.concatenate([s.listener_motion for s in usable]).astype(np.float32)
        self.beta = np.stack([_beta_of(s, needs_beta) for s in usable]).astype(np.float32)
        offsets = np.cumsum([0] + [s.T for s in usable])[:-1]
        n_starts = np.array([s.T - crop + 1 for s in usable])
        self.first = np.repeat(offsets, n_starts) + np.concatenate([np.arange(n) for n in n_starts])  # global starts
        self.seg_of = np.repeat(np.arange(len(usable)), n_starts)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.take(self.draw(batch))

    def draw(self, batch: int) -> np.ndarray:
        """Crop ids (batch,) of the next batch (the RNG's only use: the same on every rank)."""
        return self.rng.integers(0, len(self.first), size=batch)

    def take(self, j: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops ``j``: motion (len(j), crop, 56), beta (len(j), 100)."""
        frames = self.first[j][:, None] + np.arange(self.crop)[None]
        return torch.from_numpy(self.motion[frames]), torch.from_numpy(self.beta[self.seg_of[j]])


def eval_windows(segments, window: int = 240, needs_beta: bool = True):
    """All ``Segment.windows(window)`` of ``segments`` -> (motion (N, window, 56), beta (N, 100), ids)."""
    if window % 8:
        raise ValueError(f"window: expected a multiple of 8, got {window}")
    mots, betas, ids = [], [], []
    for seg in segments:
        for w in seg.windows(window):
            mots.append(w.listener_motion)
            betas.append(_beta_of(seg, needs_beta))
            ids.append(seg.listener_id)
    if not mots:
        raise ValueError(f"segments: expected at least one segment with >= {window} frames for evaluation, got "
                         f"{len(segments)} segments of lengths {sorted({s.T for s in segments})[:5]}")
    return torch.from_numpy(np.stack(mots)), torch.from_numpy(np.stack(betas).astype(np.float32)), ids


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_vq(model: VQVAE, segments, window: int = 240, batch_size: int = 64) -> dict:
    """Table 5 metrics on the ``window``-frame windows of ``segments`` (see the module docstring):
    ``dict(rec, commit, ppl, entropy, used, rec_swap, rec_mean, rec_clip_mean, n_windows)``.
    Rec / Commit / PPL are :func:`minilisten.metrics.vq_rec` / ``vq_commit`` / ``perplexity``
    (per batch, weighted by its size). Under torchrun each rank evaluates its shard of the windows
    and the sums and codes are gathered (call it on every rank; every rank gets the result)."""
    mot, beta, _ = eval_windows(segments, window, model.needs_beta)
    # identity swap: each window gets the beta of the next person (cyclic). Persons are told apart by
    # beta (data.coverage.identity_groups), not listener_id: LM-listener's layout names one listener
    # per directory however many people it holds.
    group = identity_groups(beta.numpy())
    first = [int(np.flatnonzero(group == g)[0]) for g in range(int(group.max()) + 1)]
    swap = beta[[first[(g + 1) % len(first)] for g in group]]
    was_training = model.training
    model.eval()
    dev = model.motion_mean.device
    sums = dict(rec=0.0, rec_swap=0.0, rec_mean=0.0, rec_clip_mean=0.0, commit=0.0)
    codes = []
    lo, hi = distributed.shard_bounds(len(mot))
    try:
        for a in range(lo, hi, batch_size):
            e = min(a + batch_size, hi)
            m, b, bs = mot[a:e].to(dev), beta[a:e].to(dev), swap[a:e].to(dev)
            z = model.encode_latents(m)                                            # (B, L, d_c)
            idx, zq = model.nearest_codes(z)                                       # (B, L), (B, L, d_c)
            zq = zq.to(z.dtype)
            n = m.numel()
            sums["commit"] += vq_commit(z, zq) * zq.numel()
            sums["rec"] += vq_rec(model.decode_latents(zq, b if model.needs_beta else None), m) * n
            sums["rec_swap"] += vq_rec(model.decode_latents(zq, bs if model.needs_beta else None), m) * n
            sums["rec_mean"] += vq_rec(model.motion_mean.expand_as(m), m) * n
            sums["rec_clip_mean"] += vq_rec(m.mean(1, keepdim=True).expand_as(m), m) * n
            codes.append(idx.cpu())
    finally:
        model.train(was_training)
    codes = torch.cat([c.reshape(-1) for c in codes]) if codes else torch.zeros(0, dtype=torch.long)
    if distributed.get_env().distributed:
        sums = distributed.all_reduce_sums(sums)
        codes = distributed.all_gather_rows(codes.to(distributed.collective_device())).cpu()
    n_el = mot.numel()
    ppl = perplexity(codes, model.config.codebook_size)
    return dict(rec=sums["rec"] / n_el, commit=sums["commit"] / (codes.numel() * model.config.code_dim), ppl=ppl,
                entropy=math.log(ppl), used=int(codes.unique().numel()), rec_swap=sums["rec_swap"] / n_el,
                rec_mean=sums["rec_mean"] / n_el, rec_clip_mean=sums["rec_clip_mean"] / n_el, n_windows=len(mot))


# ----------------------------------------------------------------------------- training
@dataclass
class VQTrainConfig:
    """How :func:`train_vq` trains (CPU-sized defaults; :data:`PAPER_DEFAULTS` the paper's)."""
    steps: int = 1000                       # optimisation steps
    batch_size: int = 32                    # crops per step
    crop: int | None = None                 # training crop in frames, a multiple of 8 (None: the evaluation window, 240)
    learning_rate: float = 1e-3             # AdamW (0.9, 0.99) learning rate after warm-up
    final_learning_rate: float | None = None  # learning rate from decay_step on (None: learning_rate / 20)
    decay_step: int | None = None           # step of the learning-rate drop (None: 2/3 of steps)
    warmup: int = 100                       # linear learning-rate warm-up steps
    weight_decay: float = 0.0               # AdamW weight decay
    eval_every: int = 500                   # validate every N steps (0: only at the end)
    save_every: int = 500                   # save every N steps (0: only at the end)
    seed: int = 0                           # seed of the initialisation and the crops
    device: str = "cpu"                     # torch device
    precision: str = "fp32"                 # fp32 | bf16 | fp16 (autocast; the VQ maths stays fp32)
    grad_accum: int = 1                     # micro-batches per step (batch_size: the global batch, all processes)
    compile: bool = False                   # torch.compile the encoder and decoder (the codebook stays eager)

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        for name in ("warmup", "eval_every", "save_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        check_scale(self.precision, self.grad_accum, self.batch_size)


def check_scale(precision: str, grad_accum: int, batch_size: int) -> None:
    """``precision`` in PRECISIONS; ``batch_size`` split into ``grad_accum`` micro-batches, each split
    over the processes of a torchrun launch (ValueError naming the option)."""
    if precision not in distributed.PRECISIONS:
        raise ValueError(f"--precision: expected one of {distributed.PRECISIONS}, got {precision!r}")
    if not (isinstance(grad_accum, int) and not isinstance(grad_accum, bool) and grad_accum >= 1):
        raise ValueError(f"--grad-accum: expected a positive int, got {grad_accum!r}")
    if batch_size % grad_accum:
        raise ValueError(f"--batch-size: expected a multiple of --grad-accum {grad_accum}, got {batch_size}")
    distributed.rank_slice(batch_size // grad_accum, what=f"--batch-size / --grad-accum ({batch_size} / {grad_accum})")


#: old keyword / train-state names -> new (learning rate is never "lr": LR means listener response)
VQ_RENAMED = {"lr": "learning_rate", "lr_final": "final_learning_rate", "decay_at": "decay_step"}
PAPER_DEFAULTS = dict(width=512, code_dim=512, batch_size=256, steps=300_000, learning_rate=2e-4,
                      final_learning_rate=1e-5, decay_step=200_000, crop=None)
CPU_MODEL = dict(width=64, code_dim=64)   # the CLI's model size (VQConfig's defaults are the paper's)


def data_fps(segments) -> float:
    """The one frame rate of ``segments`` (ValueError when they mix rates)."""
    rates = sorted({float(s.fps) for s in segments})
    if len(rates) != 1:
        raise ValueError(f"segments: expected one frame rate, got {rates}")
    return rates[0]


def train_vq(train_segments, val_segments, preset: str = "disentangled", *, out_dir=None, progress: bool = True,
             resume: bool = False, eval_window: int = 240, log=print, config: VQTrainConfig | None = None,
             **kwargs) -> VQVAE:
    """Train a VQ-VAE on the listener motion of ``train_segments``; returns the model (eval mode).

    ``preset`` is ``naive`` or ``disentangled``. ``kwargs``: fields of :class:`VQTrainConfig`
    (on top of ``config``; old names ``lr``, ``lr_final``, ``decay_at`` are accepted) and of
    :class:`VQConfig` (e.g. ``width=64, enc_norm="ln", dec_norm="adaln"``). ``VQConfig.fps`` is
    set from the data. With ``out_dir`` the model and training state are saved every
    ``save_every`` steps and at the end (:class:`~minilisten.training.TrainLoop`); ``resume=True``
    continues from there.
    """
    kwargs = renamed_kwargs(kwargs, VQ_RENAMED, "train_vq")
    train_names = {f.name for f in fields(VQTrainConfig)}
    model_names = {f.name for f in fields(VQConfig)}
    unknown = sorted(set(kwargs) - train_names - model_names)
    if unknown:
        raise TypeError(f"train_vq: unexpected keyword arguments {unknown}")
    tc = VQTrainConfig(**{**(asdict(config) if config is not None else {}),
                          **{k: v for k, v in kwargs.items() if k in train_names}})
    config_overrides = {k: v for k, v in kwargs.items() if k in model_names}
    config_overrides.setdefault("fps", data_fps(train_segments))
    crop = eval_window if tc.crop is None else tc.crop
    if crop % 8 or crop < 8:
        raise ValueError(f"crop: expected a positive multiple of 8, got {crop}")
    final_lr = tc.learning_rate / 20 if tc.final_learning_rate is None else tc.final_learning_rate
    decay_step = (2 * tc.steps) // 3 if tc.decay_step is None else tc.decay_step
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    if resume:
        if out_dir is None:
            raise ValueError("resume: needs out_dir (the directory to resume from)")
        model = VQVAE.from_pretrained(out_dir).to(tc.device)
        want = VQVAE.from_preset(preset, **config_overrides).config
        diff = {f.name: (getattr(model.config, f.name), getattr(want, f.name)) for f in fields(VQConfig)
                if getattr(model.config, f.name) != getattr(want, f.name)}
        if diff:
            raise ValueError(f"resume from {str(out_dir)!r}: checkpoint config differs from the requested one "
                             f"(field: (checkpoint, requested)): {diff}")
    else:
        model = VQVAE.from_preset(preset, **config_overrides).to(tc.device)
        mean, std = motion_stats(train_segments)
        model.set_motion_stats(mean, std)
    distributed.broadcast_tensors(list(model.state_dict().values()))   # every rank starts from rank 0's weights
    model.train()
    if tc.compile:   # in place: parameter names (and so checkpoints) stay as they are
        model.encoder.compile()
        model.decoder.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, betas=(0.9, 0.99), weight_decay=tc.weight_decay)
    hparams = dict(asdict(tc), preset=preset, final_learning_rate=final_lr, decay_step=decay_step, crop=crop)
    main = distributed.is_main()

    def validate(step):
        if not val_segments:
            return None
        r = evaluate_vq(model, val_segments, window=eval_window)   # sharded over the ranks
        if out_dir is not None and main:
            append_jsonl(Path(out_dir) / "log.jsonl", dict(r, step=step))
        if log is not None and main and step < tc.steps:
            log(f"[val step {step}] rec {r['rec']:.4f} commit {r['commit']:.4f} ppl {r['ppl']:.1f} used {r['used']}")
        return r

    loop = TrainLoop(model, opt, steps=tc.steps, out_dir=out_dir, eval_every=tc.eval_every,
                     save_every=tc.save_every, validate=validate, validate_at_end=out_dir is not None,
                     schedule=step_decay(tc.learning_rate, tc.warmup, decay_step, final_lr),
                     save_model=model.save_pretrained, extra_state=lambda: {"hparams": hparams}, numpy_rng=rng,
                     desc=f"train-vq {preset}", progress=progress, ema=0.95, postfix_every=10,
                     postfix=dict(rec=".4f", veloc=".4f", embed=".3f", ppl=".0f"), precision=tc.precision,
                     grad_accum=tc.grad_accum, device=tc.device, samples_per_step=tc.batch_size,
                     log=log if main else None)
    if resume:
        loop.resume()
    sampler = CropSampler(train_segments, crop, model.needs_beta, rng)
    micro = tc.batch_size // tc.grad_accum
    mine = distributed.rank_slice(micro, what="--batch-size / --grad-accum")
    drawn = {}

    def step_fn(step, k=0):
        # every rank draws the same global batch (same RNG state) and takes its slice of micro-batch k:
        # the order of crops does not depend on the number of processes (--resume on another count)
        if k == 0:
            drawn["j"] = sampler.draw(tc.batch_size)
        motion, beta = sampler.take(drawn["j"][k * micro:(k + 1) * micro][mine])
        out = model(motion.to(tc.device), beta.to(tc.device))
        return out.loss, {k: v.item() for k, v in out.losses.items()} | {"ppl": out.perplexity.item()}

    loop.run(step_fn)
    return model.eval()


# ----------------------------------------------------------------------------- CLI
def _load_splits(a):
    ds, what = load_data(a)
    return ds.train, ds.val, ds.test, what


def _data_args(p):
    g = add_data_args(p)
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; 0 = torch's default)")


#: VQConfig fields on the command line (the rest: the paper's values; fps: from the data)
MODEL_FIELDS = ("enc_norm", "dec_norm", "width", "code_dim", "codebook_size", "res_depth", "w_embed", "w_commit",
                "w_veloc", "decay", "dead_threshold")


def _model_args(p) -> list[str]:
    g = p.add_argument_group("model (VQConfig; CPU-sized width, --paper for the paper's)")
    g.add_argument("--preset", choices=list(PRESETS), default="disentangled",
                   help="naive = (none, none), disentangled = (in, adain) (default: %(default)s)")
    return add_dataclass_args(g, VQConfig, only=MODEL_FIELDS, choices={"enc_norm": ENC_NORMS, "dec_norm": DEC_NORMS},
                              defaults={"enc_norm": "the preset's", "dec_norm": "the preset's", **CPU_MODEL},
                              alt_defaults={"--paper": PAPER_DEFAULTS})


def _train_args(p) -> list[str]:
    g = p.add_argument_group("training (VQTrainConfig; CPU defaults, --paper for the paper's)")
    g.add_argument("--paper", action="store_true", help="paper sizes/schedule: width 512, d_c 512, batch 256, "
                   "300K steps, learning rate 2e-4 then 1e-5 after 200K")
    names = add_dataclass_args(g, VQTrainConfig, skip=("device",), alt_defaults={"--paper": PAPER_DEFAULTS},
                               choices={"precision": distributed.PRECISIONS})
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return names


def _resolve(a, model_names, train_names) -> dict:
    """train_vq keywords from parsed args: the given options over the --paper or CPU defaults."""
    base = {**CPU_MODEL, **(PAPER_DEFAULTS if a.paper else {})}
    kw = {k: v for k, v in base.items() if k in set(model_names) | set(train_names)}
    kw.update(dataclass_kwargs(a, model_names))
    kw.update(dataclass_kwargs(a, train_names))
    return dict(kw, device=a.device, progress=not a.no_progress)


def _fmt_row(name, r) -> str:
    return (f"| {name} | {r['rec']:.4f} | {r['commit']:.4f} | {r['ppl']:.1f} | {r['entropy']:.2f} | {r['used']} | "
            f"{r['rec_swap']:.4f} |")


TABLE_HEAD = ("| (enc, dec) | Rec (MSE) | Commit | PPL | entropy (nats) | codes used | Rec, swapped beta |\n"
              "|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    """``python -m minilisten train-vq``: train one VQ-VAE and print its validation metrics."""
    p = ArgumentParser(prog="python -m minilisten train-vq", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _data_args(p)
    model_names, train_names = _model_args(p), _train_args(p)
    p.add_argument("--out", metavar="DIR", help="checkpoint directory (default: runs/vq-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = a.out or f"runs/vq-{a.preset}"
    kw = _resolve(a, model_names, train_names)
    env, kw["device"] = distributed.init_distributed(kw["device"])   # torchrun: one process per GPU / CPU slot
    try:
        code = _main_train(a, kw, out, env)
    finally:
        distributed.shutdown()
    return distributed.finish(code, env)


def _main_train(a, kw, out, env) -> int:
    say = print if env.is_main else (lambda *x, **y: None)
    t0 = time.perf_counter()
    train, val, _, what = _load_splits(a)
    say(f"{what}: {len(train)} train / {len(val)} val segments ({time.perf_counter() - t0:.1f} s)"
        + (f"; {env.world_size} processes ({env.backend})" if env.distributed else ""))
    t0 = time.perf_counter()
    model = train_vq(train, val, a.preset, out_dir=out, resume=a.resume, **kw)
    dt = time.perf_counter() - t0
    r = evaluate_vq(model, val)
    if not env.is_main:
        return 0
    c = model.config
    print(f"trained in {dt:.0f} s; saved to {out}")
    print(TABLE_HEAD)
    print(_fmt_row(f"{c.enc_norm}, {c.dec_norm}", r))
    print(f"dataset-mean predictor Rec: {r['rec_mean']:.4f}; per-window-mean oracle Rec: {r['rec_clip_mean']:.4f} "
          f"({r['n_windows']} validation windows of 240 frames)")
    return 0


def main_evaluate(argv: list[str] | None = None) -> int:
    """``python -m minilisten evaluate-vq``: Table 5 for saved checkpoints, or train the variants first."""
    p = ArgumentParser(
        prog="python -m minilisten evaluate-vq", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rec / Commit / PPL of VQ-VAEs on a split (paper Table 5). Either pass checkpoint "
        "directories, or --variants to train each (enc,dec) norm pair with the train-vq options first.")
    p.add_argument("checkpoints", nargs="*", metavar="DIR", help="VQ-VAE checkpoint directories")
    p.add_argument("--variants", nargs="+", metavar="ENC,DEC",
                   help="train these norm pairs, e.g. none,none ln,ln ln,adaln in,in in,adain")
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--out", metavar="DIR", help="with --variants: save each model in DIR/ENC-DEC")
    _data_args(p)
    model_names, train_names = _model_args(p), _train_args(p)
    a = p.parse_args(argv)
    if bool(a.checkpoints) == bool(a.variants):
        p.error("pass checkpoint directories or --variants (one of the two)")
    if a.threads:
        torch.set_num_threads(a.threads)
    train, val, test, what = _load_splits(a)
    segs = val if a.split == "val" else test
    rows = []
    if a.checkpoints:
        for d in a.checkpoints:
            m = VQVAE.from_pretrained(d)
            rows.append((f"{m.config.enc_norm}, {m.config.dec_norm} ({d})", evaluate_vq(m, segs)))
    else:
        kw = _resolve(a, model_names, train_names)
        for v in a.variants:
            parts = v.split(",")
            if len(parts) != 2:
                p.error(f"--variants: expected ENC,DEC like in,adain, got {v!r}")
            enc, dec = parts
            kw_v = dict(kw, enc_norm=enc, dec_norm=dec)
            out = None if a.out is None else str(Path(a.out) / f"{enc}-{dec}")
            t0 = time.perf_counter()
            m = train_vq(train, val, "naive", out_dir=out, **kw_v)
            print(f"[{enc}, {dec}] trained in {time.perf_counter() - t0:.0f} s")
            rows.append((f"{enc}, {dec}", evaluate_vq(m, segs)))
    print(f"\n{what}, {a.split} split, {rows[0][1]['n_windows']} windows of 240 frames; raw coefficients")
    print(TABLE_HEAD)
    for name, r in rows:
        print(_fmt_row(name, r))
    print(f"| dataset-mean predictor | {rows[0][1]['rec_mean']:.4f} | | | | | |")
    print(f"| per-window-mean oracle | {rows[0][1]['rec_clip_mean']:.4f} | | | | | |")
    return 0
