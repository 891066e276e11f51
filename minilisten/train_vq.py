"""Train and evaluate the listener-motion VQ-VAE (``python -m minilisten train-vq`` / ``evaluate-vq``).

Training samples random crops (default: as long as the evaluation window, 240 frames) of the
listener motion with the listener's beta; validation uses the 240-frame windows of the validation segments
(``Segment.windows(240)``, LM-listener's clip length). AdamW (0.9, 0.99); the learning rate warms
up linearly, stays at ``lr`` and drops to ``lr_final`` after ``decay_at`` steps (paper: 2e-4 for
200K steps, then 1e-5 for 100K; by default the same 2/3 : 1/3 split and /20 drop at any length).
``--paper`` selects the paper's sizes and schedule (width 512, d_c 512, batch 256, 300K steps); the
CLI's own defaults are sized for a few minutes on a 2-core CPU (width 64, d_c 64, batch 32,
crops of 240 frames, 1000 steps at lr 1e-3; K = 256 as the paper) and use one CPU thread: on the
shared 2-core box one thread measured ~10x faster than two (170 vs 1700 ms per step under load,
OpenMP threads spin-waiting); pass ``--threads 2`` on an idle machine. The Python defaults of
:class:`~minilisten.vqvae.VQConfig` are the paper's.

Checkpoints (``--out DIR``): ``config.json`` + ``model.safetensors`` (``VQVAE.from_pretrained``),
``train_state.*`` (optimizer, step, RNG states) for ``--resume``, ``log.jsonl`` (one line per
validation). Everything is written atomically.

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
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import atomic_write_text, checkpoint_transaction, load_train_state, save_train_state
from .data.cli import add_data_args, load_data
from .data.coverage import identity_groups
from .data.segment import N_SHAPE
from .data.windows import motion_stats
from .vqvae import PRESETS, VQConfig, VQVAE, perplexity

# crop None = the evaluation window (240): instance norm takes its statistics over the whole input, so
# an IN/AdaIN model trained on short crops sees other statistics at 240 frames (issue 13; README Table 5)
CPU_DEFAULTS = dict(width=64, code_dim=64, batch_size=32, steps=1000, lr=1e-3, crop=None)
PAPER_DEFAULTS = dict(width=512, code_dim=512, batch_size=256, steps=300_000, lr=2e-4, lr_final=1e-5,
                      decay_at=200_000, crop=None)


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
        j = self.rng.integers(0, len(self.first), size=batch)
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
    ``dict(rec, commit, ppl, entropy, used, rec_swap, rec_mean, rec_clip_mean, n_windows)``."""
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
    se = se_swap = se_mean = se_clip = se_commit = 0.0
    codes = []
    try:
        for a in range(0, len(mot), batch_size):
            m, b, bs = mot[a:a + batch_size].to(dev), beta[a:a + batch_size].to(dev), swap[a:a + batch_size].to(dev)
            m = model._check_motion(m)
            z = model._encode_latents(m)                                           # (B, L, d_c)
            B, L, d = z.shape
            idx, zq = model._lookup(z.reshape(B * L, d))
            se_commit += F.mse_loss(z.reshape(B * L, d).float(), zq, reduction="sum").item()
            zq = zq.view(B, L, d).to(z.dtype)
            std, mean = model.motion_std, model.motion_mean
            nb = b if model.needs_beta else None
            y = model._decode_latents(zq, nb) * std + mean
            se += (y - m).pow(2).sum().item()
            ys = model._decode_latents(zq, bs if model.needs_beta else None) * std + mean
            se_swap += (ys - m).pow(2).sum().item()
            se_mean += (m - mean).pow(2).sum().item()
            se_clip += (m - m.mean(1, keepdim=True)).pow(2).sum().item()
            codes.append(idx.cpu())
    finally:
        model.train(was_training)
    codes = torch.cat(codes)
    n_el = mot.numel()
    ppl = perplexity(codes, model.config.codebook_size).item()
    return dict(rec=se / n_el, commit=se_commit / (codes.numel() * model.config.code_dim), ppl=ppl,
                entropy=math.log(ppl), used=int(codes.unique().numel()), rec_swap=se_swap / n_el,
                rec_mean=se_mean / n_el, rec_clip_mean=se_clip / n_el, n_windows=len(mot))


# ----------------------------------------------------------------------------- training
def lr_at(step: int, lr: float, lr_final: float, warmup: int, decay_at: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr if step < decay_at else lr_final


def train_vq(train_segments, val_segments, preset: str = "disentangled", steps: int = 1000, batch_size: int = 32,
             lr: float = 1e-3, out_dir=None, seed: int = 0, progress: bool = True, *, crop: int | None = None,
             lr_final: float | None = None, decay_at: int | None = None, warmup: int = 100,
             weight_decay: float = 0.0, eval_every: int = 500, save_every: int = 500, resume: bool = False,
             device: str = "cpu", eval_window: int = 240, log=print, **config_overrides) -> VQVAE:
    """Train a VQ-VAE on the listener motion of ``train_segments``; returns the model (eval mode).

    ``preset`` is ``naive`` or ``disentangled``; ``config_overrides`` go to :class:`VQConfig`
    (e.g. ``width=64, enc_norm="ln", dec_norm="adaln"``). With ``out_dir`` the model and training
    state are saved every ``save_every`` steps and at the end; ``resume=True`` continues from there.
    """
    crop = eval_window if crop is None else crop
    if crop % 8 or crop < 8:
        raise ValueError(f"crop: expected a positive multiple of 8, got {crop}")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    lr_final = lr / 20 if lr_final is None else lr_final
    decay_at = (2 * steps) // 3 if decay_at is None else decay_at
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = 0
    if resume:
        if out_dir is None:
            raise ValueError("resume: needs out_dir (the directory to resume from)")
        model = VQVAE.from_pretrained(out_dir).to(device)
        want = VQVAE.from_preset(preset, **config_overrides).config
        diff = {f.name: (getattr(model.config, f.name), getattr(want, f.name)) for f in dataclasses.fields(VQConfig)
                if getattr(model.config, f.name) != getattr(want, f.name)}
        if diff:
            raise ValueError(f"resume from {str(out_dir)!r}: checkpoint config differs from the requested one "
                             f"(field: (checkpoint, requested)): {diff}")
    else:
        model = VQVAE.from_preset(preset, **config_overrides).to(device)
        mean, std = motion_stats(train_segments)
        model.set_motion_stats(mean, std)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    if resume:
        info = load_train_state(out_dir, opt)
        start = int(info["step"])
        if steps < start:
            raise ValueError(f"--steps ({out_dir}): expected >= the saved step {start} to resume, got {steps}")
        rng.bit_generator.state = info["numpy_rng"]
        torch.set_rng_state(torch.tensor(info["torch_rng"], dtype=torch.uint8))
    sampler = CropSampler(train_segments, crop, model.needs_beta, rng)
    hparams = dict(preset=preset, steps=steps, batch_size=batch_size, lr=lr, lr_final=lr_final, decay_at=decay_at,
                   warmup=warmup, weight_decay=weight_decay, crop=crop, seed=seed)

    def save(step):
        if out_dir is None:
            return
        with checkpoint_transaction(out_dir, step) as stage:   # model + train state: one atomic set
            model.save_pretrained(stage)
            save_train_state(stage, opt, dict(step=step, numpy_rng=rng.bit_generator.state,
                                              torch_rng=torch.get_rng_state().tolist(), hparams=hparams))

    def validate(step):
        if not val_segments:
            return None
        r = evaluate_vq(model, val_segments, window=eval_window)
        r["step"] = step
        if out_dir is not None:
            path = Path(out_dir) / "log.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            old = path.read_text() if path.exists() else ""
            atomic_write_text(path, old + json.dumps(r) + "\n")
        return r

    from tqdm.auto import tqdm
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc=f"train-vq {preset}",
               dynamic_ncols=True)
    ema = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, lr_final, warmup, decay_at)
        motion, beta = sampler.sample(batch_size)
        out = model(motion.to(device), beta.to(device))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"train-vq: loss became {out.loss.item()} at step {step}")
        cur = {k: v.item() for k, v in out.losses.items()} | {"ppl": out.perplexity.item()}
        ema = cur if ema is None else {k: 0.95 * ema[k] + 0.05 * cur[k] for k in cur}
        if progress and step % 10 == 0:
            bar.set_postfix(rec=f"{ema['rec']:.4f}", vel=f"{ema['veloc']:.4f}", emb=f"{ema['embed']:.3f}",
                            ppl=f"{ema['ppl']:.0f}")
        done = step + 1
        if eval_every and done % eval_every == 0 and done < steps:
            r = validate(done)
            if r is not None and log is not None:
                log(f"[val step {done}] rec {r['rec']:.4f} commit {r['commit']:.4f} ppl {r['ppl']:.1f} used {r['used']}")
            model.train()
        if save_every and done % save_every == 0 and done < steps:
            save(done)
    bar.close()
    if out_dir is not None:
        validate(steps)
        save(steps)
    return model.eval()


# ----------------------------------------------------------------------------- CLI
def _load_splits(a):
    ds, what = load_data(a)
    return ds.train, ds.val, ds.test, what


def _data_args(p):
    g = add_data_args(p)
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch's default)")


def _model_args(p):
    g = p.add_argument_group("model (VQConfig)")
    g.add_argument("--preset", choices=list(PRESETS), default="disentangled")
    g.add_argument("--enc-norm", choices=["none", "in", "ln"], help="override the preset's encoder norm")
    g.add_argument("--dec-norm", choices=["none", "in", "ln", "adain", "adaln"], help="override the decoder norm")
    g.add_argument("--width", type=int)
    g.add_argument("--code-dim", type=int)
    g.add_argument("--codebook-size", type=int, default=256)
    g.add_argument("--res-depth", type=int, default=1)
    g.add_argument("--w-embed", type=float, default=1.0)
    g.add_argument("--w-commit", type=float, default=0.02)
    g.add_argument("--w-veloc", type=float, default=0.5)
    g.add_argument("--decay", type=float, default=0.99, help="EMA decay of the codebook")
    g.add_argument("--dead-threshold", type=float, default=1.0, help="EMA count below which a code is reset")


def _train_args(p):
    g = p.add_argument_group("training (CPU defaults; --paper for the paper's)")
    g.add_argument("--paper", action="store_true", help="paper sizes/schedule: width 512, d_c 512, batch 256, "
                   "300K steps, lr 2e-4 then 1e-5 after 200K")
    g.add_argument("--steps", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--crop", type=int, help="training crop length in frames (multiple of 8; default 240, the "
                   "evaluation window: IN statistics of shorter crops differ from those at 240 frames)")
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-final", type=float, help="lr after --decay-at (default lr / 20)")
    g.add_argument("--decay-at", type=int, help="step of the lr drop (default 2/3 of --steps)")
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--eval-every", type=int, default=500)
    g.add_argument("--save-every", type=int, default=500)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--no-progress", action="store_true")


def _resolve(a) -> tuple[dict, dict]:
    """(train kwargs, config overrides) from parsed args, CPU or paper defaults filling the gaps."""
    base = PAPER_DEFAULTS if a.paper else CPU_DEFAULTS
    pick = lambda k: getattr(a, k) if getattr(a, k) is not None else base.get(k)  # noqa: E731
    cfg = dict(width=pick("width"), code_dim=pick("code_dim"), codebook_size=a.codebook_size, res_depth=a.res_depth,
               w_embed=a.w_embed, w_commit=a.w_commit, w_veloc=a.w_veloc, decay=a.decay,
               dead_threshold=a.dead_threshold)
    if getattr(a, "enc_norm", None):
        cfg["enc_norm"] = a.enc_norm
    if getattr(a, "dec_norm", None):
        cfg["dec_norm"] = a.dec_norm
    kw = dict(steps=pick("steps"), batch_size=pick("batch_size"), crop=pick("crop"), lr=pick("lr"),
              lr_final=pick("lr_final"), decay_at=pick("decay_at"), warmup=a.warmup, weight_decay=a.weight_decay,
              eval_every=a.eval_every, save_every=a.save_every, seed=a.seed, device=a.device,
              progress=not a.no_progress)
    return kw, cfg


def _fmt_row(name, r) -> str:
    return (f"| {name} | {r['rec']:.4f} | {r['commit']:.4f} | {r['ppl']:.1f} | {r['entropy']:.2f} | {r['used']} | "
            f"{r['rec_swap']:.4f} |")


TABLE_HEAD = ("| (enc, dec) | Rec (MSE) | Commit | PPL | entropy (nats) | codes used | Rec, swapped beta |\n"
              "|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    """``python -m minilisten train-vq``: train one VQ-VAE and print its validation metrics."""
    p = argparse.ArgumentParser(prog="python -m minilisten train-vq", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _data_args(p)
    _model_args(p)
    _train_args(p)
    p.add_argument("--out", metavar="DIR", help="checkpoint directory (default runs/vq-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = a.out or f"runs/vq-{a.preset}"
    kw, cfg = _resolve(a)
    t0 = time.perf_counter()
    train, val, _, what = _load_splits(a)
    print(f"{what}: {len(train)} train / {len(val)} val segments ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    model = train_vq(train, val, a.preset, out_dir=out, resume=a.resume, **kw, **cfg)
    dt = time.perf_counter() - t0
    r = evaluate_vq(model, val)
    c = model.config
    print(f"trained in {dt:.0f} s; saved to {out}")
    print(TABLE_HEAD)
    print(_fmt_row(f"{c.enc_norm}, {c.dec_norm}", r))
    print(f"dataset-mean predictor Rec: {r['rec_mean']:.4f}; per-window-mean oracle Rec: {r['rec_clip_mean']:.4f} "
          f"({r['n_windows']} validation windows of 240 frames)")
    return 0


def main_evaluate(argv: list[str] | None = None) -> int:
    """``python -m minilisten evaluate-vq``: Table 5 for saved checkpoints, or train the variants first."""
    p = argparse.ArgumentParser(
        prog="python -m minilisten evaluate-vq", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rec / Commit / PPL of VQ-VAEs on a split (paper Table 5). Either pass checkpoint "
        "directories, or --variants to train each (enc,dec) norm pair with the train-vq options first.")
    p.add_argument("checkpoints", nargs="*", metavar="DIR", help="VQ-VAE checkpoint directories")
    p.add_argument("--variants", nargs="+", metavar="ENC,DEC",
                   help="train these norm pairs, e.g. none,none ln,ln ln,adaln in,in in,adain")
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--out", metavar="DIR", help="with --variants: save each model in DIR/ENC-DEC")
    _data_args(p)
    _model_args(p)
    _train_args(p)
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
        kw, cfg = _resolve(a)
        for v in a.variants:
            parts = v.split(",")
            if len(parts) != 2:
                p.error(f"--variants: expected ENC,DEC like in,adain, got {v!r}")
            enc, dec = parts
            cfg_v = dict(cfg, enc_norm=enc, dec_norm=dec)
            out = None if a.out is None else str(Path(a.out) / f"{enc}-{dec}")
            t0 = time.perf_counter()
            m = train_vq(train, val, "naive", out_dir=out, **kw, **cfg_v)
            print(f"[{enc}, {dec}] trained in {time.perf_counter() - t0:.0f} s")
            rows.append((f"{enc}, {dec}", evaluate_vq(m, segs)))
    print(f"\n{what}, {a.split} split, {rows[0][1]['n_windows']} windows of 240 frames; raw coefficients")
    print(TABLE_HEAD)
    for name, r in rows:
        print(_fmt_row(name, r))
    print(f"| dataset-mean predictor | {rows[0][1]['rec_mean']:.4f} | | | | | |")
    print(f"| per-window-mean oracle | {rows[0][1]['rec_clip_mean']:.4f} | | | | | |")
    return 0
