"""Train and evaluate the listener-motion VQ-VAE (``python -m minilisten train-vq`` / ``evaluate-vq``).

Training: random crops of the listener motion (default: the 240-frame evaluation window) with the listener's
beta; ``--paper``: the paper's sizes and schedule, else sized for minutes on a CPU. Evaluation (paper Table 5)
on raw coefficients: Rec, Commit, PPL / entropy, codes used, Rec with a swapped identity, and two floors."""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .cli_config import ArgumentParser, add_dataclass_args, dataclass_kwargs
from .data.cli import add_data_args, load_data
from .data.coverage import identity_groups, with_val_split
from .data.segment import N_SHAPE
from .data.windows import motion_stats
from .errors import UserError
from .metrics import perplexity, vq_commit, vq_rec
from .training import LoopConfig, TrainLoop, data_fps, fitted, loop_args, merged, resume_dir, windows
from .vqvae import DEC_NORMS, ENC_NORMS, PRESETS, VQVAE, VQConfig


def _beta_of(seg, needs_beta: bool) -> np.ndarray:
    if seg.listener_beta is None and needs_beta:
        raise UserError(f"segment {seg.name!r}: listener_beta is None but this VQ-VAE's decoder needs the "
                        "listener's shape beta (100,); use the naive preset for data without beta")
    return np.zeros(N_SHAPE, np.float32) if seg.listener_beta is None else seg.listener_beta


def _crops(segments, items, length: int, needs_beta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``length``-frame crops ``items`` [(segment, first frame)]: motion (N, length, 56), beta (N, 100)."""
    motion = np.stack([segments[i].listener_motion[t:t + length] for i, t in items]).astype(np.float32)
    beta = np.stack([_beta_of(segments[i], needs_beta) for i, _ in items]).astype(np.float32)
    return torch.from_numpy(motion), torch.from_numpy(beta)


class CropSampler:
    """Random ``crop``-frame crops of the listener motion; every valid start of every segment equally likely."""

    def __init__(self, segments, crop: int, needs_beta: bool, rng: np.random.Generator):
        self.segments, self.crop, self.needs_beta, self.rng = segments, crop, needs_beta, rng
        self.items = windows(segments, crop, 1)                        # (segment, first frame) of every crop

    def draw(self, batch: int) -> np.ndarray:
        """Crop ids (batch,) of the next global batch (the RNG's only use: the same on every rank)."""
        return self.rng.integers(0, len(self.items), size=batch)

    def take(self, j: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops ``j``: motion (len(j), crop, 56), beta (len(j), 100)."""
        return _crops(self.segments, [self.items[i] for i in j], self.crop, self.needs_beta)


def eval_windows(segments, window: int = 240, needs_beta: bool = True):
    """The ``window``-frame windows of ``segments`` at stride ``window`` -> (motion (N, window, 56), beta (N, 100))."""
    return _crops(segments, windows(segments, window, window, 8), window, needs_beta)


@torch.no_grad()
def evaluate_vq(model: VQVAE, segments, window: int = 240, batch_size: int = 64) -> dict:
    """Table 5 on the ``window``-frame windows: ``rec, commit, ppl, entropy, used, rec_swap, rec_mean,
    rec_clip_mean, n_windows``. Under torchrun each rank evaluates a shard (call it on every rank)."""
    mot, beta = eval_windows(segments, window, model.needs_beta)
    # identity swap: each window gets the beta of the next person, told apart by beta (not listener_id)
    group = identity_groups(beta.numpy())
    first = [int(np.flatnonzero(group == g)[0]) for g in range(int(group.max()) + 1)]
    swap = beta[[first[(g + 1) % len(first)] for g in group]]
    was_training, dev, K = model.training, model.motion_mean.device, model.config.codebook_size
    model.eval()
    sums = dict(rec=0.0, rec_swap=0.0, rec_mean=0.0, rec_clip_mean=0.0, commit=0.0)
    hist = torch.zeros(K, dtype=torch.long)   # code counts
    lo, hi = distributed.shard_bounds(len(mot))
    try:
        for a in range(lo, hi, batch_size):
            m, b, bs = (t[a:min(a + batch_size, hi)].to(dev) for t in (mot, beta, swap))
            z = model.encode_latents(m)                                            # (B, L, d_c)
            idx, zq = model.nearest_codes(z)                                       # (B, L), (B, L, d_c)
            zq = zq.to(z.dtype)
            sums["commit"] += vq_commit(z, zq) * zq.numel()
            for key, pred in (("rec", model.decode_latents(zq, b if model.needs_beta else None)),
                              ("rec_swap", model.decode_latents(zq, bs if model.needs_beta else None)),
                              ("rec_mean", model.motion_mean.expand_as(m)),
                              ("rec_clip_mean", m.mean(1, keepdim=True).expand_as(m))):
                sums[key] += vq_rec(pred, m) * m.numel()
            hist += torch.bincount(idx.reshape(-1).cpu(), minlength=K)
    finally:
        model.train(was_training)
    sums = distributed.all_reduce_sums(sums | dict(enumerate(hist.tolist())))   # sharded over the ranks
    hist = torch.tensor([round(sums[i]) for i in range(K)])
    ppl = perplexity(torch.repeat_interleave(torch.arange(K), hist), K)
    n = mot.numel()
    return dict(rec=sums["rec"] / n, commit=sums["commit"] / (int(hist.sum()) * model.config.code_dim), ppl=ppl,
                entropy=math.log(ppl), used=int((hist > 0).sum()), rec_swap=sums["rec_swap"] / n,
                rec_mean=sums["rec_mean"] / n, rec_clip_mean=sums["rec_clip_mean"] / n, n_windows=len(mot))


@dataclass
class VQTrainConfig(LoopConfig):
    """How :func:`train_vq` trains (CPU-sized defaults; :data:`PAPER_DEFAULTS` the paper's)."""
    steps: int = 1000
    batch_size: int = 32
    warmup: int = 100
    decay_step: int | None = None     # step of the learning-rate drop (None: 2/3 of steps)
    final_learning_rate: float | None = None  # learning rate from decay_step on (None: learning_rate / 20)
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    eval_every: int = 500
    save_every: int = 500
    crop: int | None = None           # training crop in frames, a multiple of 8 (None: the evaluation window)
    compile: bool = False             # torch.compile the encoder and decoder (the codebook stays eager)


PAPER_DEFAULTS = dict(width=512, code_dim=512, batch_size=256, steps=300_000, learning_rate=2e-4,
                      final_learning_rate=1e-5, decay_step=200_000, crop=None)
CPU_MODEL = dict(width=64, code_dim=64)   # the CLI's model size (VQConfig's defaults are the paper's)


def train_vq(train_segments, val_segments, preset: str = "disentangled", *, out_dir=None, resume: bool = False,
             eval_window: int = 240, log=print, config: VQTrainConfig | None = None, **kwargs) -> VQVAE:
    """Train a ``naive`` or ``disentangled`` VQ-VAE on the listener motion; returns it in eval mode. ``kwargs``:
    fields of :class:`VQTrainConfig` (over ``config``) and of :class:`VQConfig`; ``fps`` comes from the data.
    The crop and ``eval_window`` are fitted to the segments (said once)."""
    train_names = {f.name for f in fields(VQTrainConfig)}
    tc = merged(VQTrainConfig, config, **{k: v for k, v in kwargs.items() if k in train_names})
    config_overrides = {"fps": data_fps(train_segments)} | {k: v for k, v in kwargs.items() if k not in train_names}
    if val_segments:
        eval_window = fitted(val_segments, eval_window, 8, "validation window", log)
    crop = fitted(train_segments, eval_window if tc.crop is None else tc.crop, 8, "training crop", log)
    if crop % 8:
        raise UserError(f"crop: expected a positive multiple of 8, got {crop}")
    final = tc.learning_rate / 20 if tc.final_learning_rate is None else tc.final_learning_rate
    tc = replace(tc, crop=crop, decay_step=(2 * tc.steps) // 3 if tc.decay_step is None else tc.decay_step,
                 final_learning_rate=final)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    if resume:
        model = VQVAE.from_pretrained(resume_dir(out_dir)).to(tc.device)
        want = asdict(VQVAE.from_preset(preset, **config_overrides).config)
        diff = {k: (v, want[k]) for k, v in asdict(model.config).items() if v != want[k]}
        if diff:
            raise UserError(f"resume from {str(out_dir)!r}: checkpoint config differs from the requested one "
                            f"(field: (checkpoint, requested)): {diff}")
    else:
        model = VQVAE.from_preset(preset, **config_overrides).to(tc.device)
        model.set_motion_stats(*motion_stats(train_segments))
    if tc.compile:   # in place: parameter names (and so checkpoints) stay as they are
        model.encoder.compile()
        model.decoder.compile()

    def validate(step):
        if not val_segments:
            return None
        r = evaluate_vq(model, val_segments, window=eval_window)   # sharded over the ranks
        if log is not None and distributed.is_main() and step < tc.steps:
            log(f"[val step {step}] rec {r['rec']:.4f} commit {r['commit']:.4f} ppl {r['ppl']:.1f} used {r['used']}")
        return r

    loop = TrainLoop(model, tc, out_dir=out_dir, validate=validate, save_model=model.save_pretrained, numpy_rng=rng,
                     desc=f"train-vq {preset}", postfix=dict(rec=".4f", veloc=".4f", embed=".3f", ppl=".0f"), log=log)
    if resume:
        loop.resume()
    sampler = CropSampler(train_segments, crop, model.needs_beta, rng)
    drawn = {}

    def step_fn(step, k):
        if k == 0:   # every rank draws the same global batch and takes its part of micro-batch k
            drawn["j"] = sampler.draw(tc.batch_size)
        motion, beta = sampler.take(tc.local(drawn["j"], k))
        out = model(motion.to(tc.device), beta.to(tc.device))
        return out.loss, {k: v.item() for k, v in out.losses.items()} | {"ppl": out.perplexity.item()}

    loop.run(step_fn)
    model.eval_window = eval_window
    return model.eval()


#: VQConfig fields on the command line (the rest: the paper's values; fps: from the data)
MODEL_FIELDS = ("enc_norm", "dec_norm", "width", "code_dim", "codebook_size", "res_depth", "w_embed", "w_commit",
                "w_veloc", "decay", "dead_threshold")


def _table(rows: list[tuple[str, dict]], what: str) -> str:
    """Table 5 rows, then the two floors, under a line saying what was evaluated."""
    r0 = rows[0][1]
    lines = [what, "| (enc, dec) | Rec (MSE) | Commit | PPL | entropy (nats) | codes used | Rec, swapped beta |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['rec']:.4f} | {r['commit']:.4f} | {r['ppl']:.1f} | {r['entropy']:.2f} | {r['used']} | "
              f"{r['rec_swap']:.4f} |" for name, r in rows]
    return "\n".join(lines + [f"| dataset-mean predictor | {r0['rec_mean']:.4f} | | | | | |",
                              f"| per-window-mean oracle | {r0['rec_clip_mean']:.4f} | | | | | |"])


def main(argv: list[str] | None = None, evaluate: bool = False) -> int:
    """``train-vq``: train one VQ-VAE and print its validation metrics. ``evaluate-vq`` (``evaluate``): Table 5
    of saved checkpoints, or of the ``--variants`` norm pairs trained first with the train-vq options."""
    p = ArgumentParser(prog=f"python -m minilisten {'evaluate-vq' if evaluate else 'train-vq'}", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    if evaluate:
        p.add_argument("checkpoints", nargs="*", metavar="DIR", help="VQ-VAE checkpoint directories")
        p.add_argument("--variants", nargs="+", metavar="ENC,DEC",
                       help="train these norm pairs, e.g. none,none ln,ln ln,adaln in,in in,adain")
        p.add_argument("--split", choices=["val", "test"], default="val")
    else:
        p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--out", metavar="DIR", help="checkpoint directory (train-vq default: runs/vq-PRESET; "
                   "evaluate-vq --variants: each model in DIR/ENC-DEC)")
    add_data_args(p).add_argument("--threads", type=int, default=1,
                                  help="torch CPU threads (default: 1; 0 = torch's default)")
    g = p.add_argument_group("model (VQConfig; CPU-sized width, --paper for the paper's)")
    g.add_argument("--preset", choices=list(PRESETS), default="disentangled",
                   help="naive = (none, none), disentangled = (in, adain) (default: %(default)s)")
    names = add_dataclass_args(g, VQConfig, only=MODEL_FIELDS, choices={"enc_norm": ENC_NORMS, "dec_norm": DEC_NORMS},
                               defaults={"enc_norm": "the preset's", "dec_norm": "the preset's", **CPU_MODEL},
                               alt_defaults={"--paper": PAPER_DEFAULTS})
    g = p.add_argument_group("training (VQTrainConfig; CPU defaults, --paper for the paper's)")
    g.add_argument("--paper", action="store_true", help="paper sizes/schedule: width 512, d_c 512, batch 256, "
                   "300K steps, learning rate 2e-4 then 1e-5 after 200K")
    names += loop_args(g, VQTrainConfig, alt_defaults={"--paper": PAPER_DEFAULTS},
                       defaults={"device": "cuda when available, else cpu"})
    a = p.parse_args(argv)
    if evaluate and bool(a.checkpoints) == bool(a.variants):
        p.error("pass checkpoint directories or --variants (one of the two)")
    if evaluate and any(len(v.split(",")) != 2 for v in a.variants or []):
        p.error(f"--variants: expected ENC,DEC like in,adain, got {a.variants}")
    kw = {k: v for k, v in {**CPU_MODEL, **(PAPER_DEFAULTS if a.paper else {})}.items() if k in names}
    kw.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    kw |= dataclass_kwargs(a, names)
    if evaluate:
        return _evaluate(a, kw)
    return distributed.launch(kw["device"], lambda env, dev: _train(a, dict(kw, device=dev), env))


def _train(a, kw, env) -> int:
    say = print if env.is_main else (lambda *x, **y: None)
    out = a.out or f"runs/vq-{a.preset}"
    ds, what = load_data(a)
    train, val, note = with_val_split(ds, seed=0)
    say(f"{what}: {len(train)} train / {len(val)} val segments" + (f" ({note})" if note else "")
        + (f"; {env.world_size} processes ({env.backend})" if env.distributed else ""))
    t0 = time.perf_counter()
    model = train_vq(train, val, a.preset, out_dir=out, resume=a.resume, log=say, **kw)
    r = evaluate_vq(model, val, model.eval_window)
    c = model.config
    say(_table([(f"{c.enc_norm}, {c.dec_norm}", r)], f"trained in {time.perf_counter() - t0:.0f} s; saved to {out}; "
               f"{r['n_windows']} validation windows of {model.eval_window} frames"))
    return 0


def _evaluate(a, kw) -> int:
    ds, what = load_data(a)
    models = [(f"{m.config.enc_norm}, {m.config.dec_norm} ({d})", m) for d in a.checkpoints
              for m in [VQVAE.from_pretrained(d)]]
    for enc, dec in (v.split(",") for v in a.variants or []):
        out = None if a.out is None else str(Path(a.out) / f"{enc}-{dec}")
        m = train_vq(ds.train, ds.val, "naive", out_dir=out, **kw | dict(enc_norm=enc, dec_norm=dec))
        models.append((f"{enc}, {dec}", m))
    rows = [(name, evaluate_vq(m, ds.val if a.split == "val" else ds.test)) for name, m in models]
    print(_table(rows, f"\n{what}, {a.split} split, {rows[0][1]['n_windows']} windows of 240 frames; raw coefficients"))
    return 0


def main_evaluate(argv: list[str] | None = None) -> int:
    """``python -m minilisten evaluate-vq``."""
    return main(argv, evaluate=True)
