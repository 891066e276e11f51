"""Two-stage training of the listener LM (paper §3.1, supplement §4).

Stage 1 (Eq. 3): speaker-only sequences S', next-token loss on W / SA / emo.
Stage 2 (Eq. 4): full sequences S, LR-head loss on LR tokens; a fraction ``lr_noise`` (0.5, as
LM-listener) of input LR tokens is replaced by random codes.

Paper schedule (``--paper-schedule``): AdamW (0.5, 0.99), batch 8; stage 1 60K it at 5e-5;
stage 2 150K it at 5e-5 then 50K at 2.5e-6 (GPT-2 medium). The CPU defaults train the small
from-scratch default backbone (``--arch llama``: rotary positions; ``--arch gpt2``) for a few
hundred steps at 1e-3 with warm-up.

Data: random training windows of ``window`` frames (a multiple of r = 8) from the training
segments, with the LR codes of the whole segment sliced to the window. Shorter windows (e.g.
``--window 96``) make steps cheaper; a window must still cover the speaker context that the
responses depend on (an utterance and its lagged response: ~3 s on the synthetic corpus).
Validation: teacher-forced LR-token accuracy (argmax of the LR head == the code, previous LR
tokens from the ground truth, no noise) on non-overlapping ``window``-frame windows.

CLI::

    python -m minilisten train-lm --stage 1 --out runs/lm1 --modalities W+SA+emo
    python -m minilisten train-lm --stage 2 --init runs/lm1 --out runs/lm2 --codes vqvae:runs/vq
    python -m minilisten train-lm --stage 2 --out runs/lm2 --resume          # continue
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text, checkpoint_transaction, load_train_state, save_train_state
from .data.cli import add_data_args, load_data
from .data.coverage import MODALITY_FIELD, available_modalities, resolve_n_sa
from .data.segment import Segment
from .lm import DEFAULT_ARCHS, ListenerLM, LMConfig, collate, default_backbone, load_backbone
from .speaker import MODALITIES, check_modalities

PAPER_SCHEDULE = {1: dict(steps=60_000, lr=5e-5, warmup=0, batch_size=8),
                  2: dict(steps=200_000, lr=5e-5, lr_decay_step=150_000, lr_after=2.5e-6, warmup=0, batch_size=8)}


@dataclass
class TrainConfig:
    stage: int = 2
    steps: int = 300
    batch_size: int = 8
    window: int = 240                 # frames per training window (multiple of r)
    lr: float = 1e-3
    warmup: int = 30                  # linear warm-up steps
    lr_decay_step: int | None = None  # step at which lr drops to lr_after (paper stage 2: 150K)
    lr_after: float | None = None     # paper stage 2: 2.5e-6
    betas: tuple[float, float] = (0.5, 0.99)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    lr_noise: float = 0.5             # stage 2: fraction of input LR tokens replaced by random codes
    eval_every: int = 100
    val_windows: int = 64             # validation windows (0 = all)
    save_every: int = 0               # 0 = at evaluations and at the end
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage: expected 1 or 2, got {self.stage!r}")
        for name in ("steps", "batch_size", "window"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if not 0 <= self.lr_noise < 1:
            raise ValueError(f"lr_noise: expected a fraction in [0, 1), got {self.lr_noise}")
        self.betas = tuple(self.betas)

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.lr_decay_step is not None and step >= self.lr_decay_step:
            return self.lr if self.lr_after is None else self.lr_after
        return self.lr


# ----------------------------------------------------------------------------- data
def _check_codes(segments: list[Segment], codes, r: int, name: str) -> list[np.ndarray]:
    if codes is None:
        return None
    if len(codes) != len(segments):
        raise ValueError(f"{name}: expected one code array per segment ({len(segments)}), got {len(codes)}")
    out = []
    for i, (s, c) in enumerate(zip(segments, codes)):
        c = c.detach().cpu().numpy() if torch.is_tensor(c) else np.asarray(c)
        if c.ndim != 1 or c.shape[0] != s.T // r:
            raise ValueError(f"{name}[{i}] ({s.name!r}): expected shape (T // r,) = ({s.T // r},), got {c.shape}")
        if not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"{name}[{i}] ({s.name!r}): expected integer codes, got dtype {c.dtype}")
        out.append(c.astype(np.int64))
    return out


def _windows(segments: list[Segment], window: int, r: int, stride: int) -> list[tuple[int, int]]:
    if window % r:
        raise ValueError(f"window: expected a multiple of r = {r} frames, got {window}")
    items = [(i, s0) for i, s in enumerate(segments) for s0 in range(0, s.T - window + 1, stride)]
    if not items:
        raise ValueError(f"window: no segment has {window} frames (longest: {max((s.T for s in segments), default=0)})")
    return items


def _sequences(model: ListenerLM, segments, codes, items, window: int, stage: int):
    r = model.config.r
    seqs = []
    for i, s0 in items:
        w = segments[i].window(s0, window)
        c = None if stage == 1 else codes[i][s0 // r: (s0 + window) // r]
        seqs += model.build_sequences(w, c)
    return seqs


def val_items(segments: list[Segment], window: int, r: int = 8, max_windows: int = 0) -> list[tuple[int, int]]:
    """Non-overlapping windows, round-robin over segments so every segment contributes."""
    per = [[(i, s0) for s0 in range(0, s.T - window + 1, window)] for i, s in enumerate(segments)]
    items, k = [], 0
    while any(k < len(p) for p in per):
        items += [p[k] for p in per if k < len(p)]
        k += 1
    return items[:max_windows] if max_windows else items


@torch.no_grad()
def evaluate_lm(model: ListenerLM, segments: list[Segment], codes=None, stage: int = 2, window: int = 240,
                max_windows: int = 0, batch_size: int = 8) -> dict:
    """Teacher-forced validation: ``{"loss", "acc", "count"}`` (stage 2: LR tokens through the LR
    head; stage 1: next W/SA/emo token through the LM head)."""
    codes = _check_codes(segments, codes, model.config.r, "lr_codes") if stage == 2 else None
    if stage == 2 and codes is None:
        raise ValueError("evaluate_lm: stage 2 needs LR codes")
    was = model.training
    model.eval()
    items = val_items(segments, window, model.config.r, max_windows)
    tot_loss = correct = count = 0.0
    for k in range(0, len(items), batch_size):
        seqs = _sequences(model, segments, codes, items[k:k + batch_size], window, stage)
        loss, st = model.loss(collate(seqs, model.vocab.pad), stage)
        tot_loss += loss.item() * st["count"]
        correct += st["correct"]
        count += st["count"]
    model.train(was)
    return {"loss": tot_loss / max(count, 1), "acc": correct / max(count, 1), "count": int(count)}


def lr_accuracy(model: ListenerLM, segments: list[Segment], codes, window: int = 240, max_windows: int = 0) -> float:
    """Teacher-forced validation LR-token accuracy (fraction of LR tokens whose argmax is right)."""
    return evaluate_lm(model, segments, codes, 2, window, max_windows)["acc"]


@torch.no_grad()
def free_running_accuracy(model: ListenerLM, segments: list[Segment], codes, window: int = 240,
                          max_windows: int = 16) -> float:
    """Greedy decoding from the speaker tokens alone (``generate_reference``; the model's own LR
    tokens are fed back): fraction of generated codes equal to the ground truth."""
    codes = _check_codes(segments, codes, model.config.r, "lr_codes")
    r, hit, tot = model.config.r, 0, 0
    for i, s0 in val_items(segments, window, r, max_windows):
        gen = model.generate(segments[i].window(s0, window))
        ref = codes[i][s0 // r: (s0 + window) // r]
        hit += int((gen == ref).sum())
        tot += ref.size
    return hit / max(tot, 1)


# ----------------------------------------------------------------------------- LR codes
def motion_kmeans_codes(train_segments: list[Segment], other: list[list[Segment]] = (), k: int = 256, r: int = 8,
                        seed: int = 0, iters: int = 15) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """A VQ-VAE-free LR tokenization for experiments: each segment's listener motion minus its
    per-coefficient mean over the segment (removes the identity's resting face), in units of the
    training set's per-coefficient std; each group of ``r`` frames -> features ``[mean (56),
    last - first (56)]`` standardized on the training set -> nearest of ``k`` k-means centroids.
    Returns ``(train_codes, [codes of each list in other])``."""
    from .speaker import _nearest_code, kmeans

    centered = lambda s: torch.from_numpy(s.listener_motion[:s.T // r * r]).double()  # noqa: E731
    scale = torch.cat([centered(s) - centered(s).mean(0) for s in train_segments]).std(0).clamp_min(1e-6)

    def feats(s: Segment) -> torch.Tensor:
        m = centered(s)
        g = ((m - m.mean(0)) / scale).view(m.shape[0] // r, r, -1)
        return torch.cat([g.mean(1), g[:, -1] - g[:, 0]], 1)

    tr = [feats(s) for s in train_segments]
    x = torch.cat(tr)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    cb = kmeans(((x - mu) / sd).float(), k, iters=iters, generator=torch.Generator().manual_seed(seed))

    def enc(f):
        return _nearest_code(((f - mu) / sd).float(), cb)[0].numpy().astype(np.int64)
    return [enc(f) for f in tr], [[enc(feats(s)) for s in segs] for segs in other]


def vqvae_codes(vq, segments: list[Segment], device: str = "cpu") -> list[np.ndarray]:
    """LR codes ``(T // 8,)`` of each segment's listener motion from a trained ``VQVAE``."""
    out = []
    for s in segments:
        T = s.T - s.T % vq.rate
        m = torch.from_numpy(s.listener_motion[:T])[None].to(device)
        beta = None if s.listener_beta is None else torch.from_numpy(s.listener_beta)[None].to(device)
        out.append(vq.encode(m, beta)[0].cpu().numpy().astype(np.int64))
    return out


# ----------------------------------------------------------------------------- training
def corpus_words(segments: list[Segment]) -> list[str]:
    return [w.text for s in segments for w in s.history_words + s.words]


def train_lm(train_segments: list[Segment], val_segments: list[Segment], lr_codes_train=None, lr_codes_val=None,
             stage: int | None = None, modalities=None, model: ListenerLM | None = None, steps: int | None = None,
             config: TrainConfig | None = None, out_dir=None, resume: bool = False, n_sa: int = 1024,
             n_lr: int = 256, backbone: dict | None = None, lm_config: dict | None = None, log=print,
             **overrides) -> ListenerLM:
    """Train ``model`` (or a fresh default: small LLaMA-layout LM + BPE tokenizer trained on the training
    words, sized by ``backbone`` kwargs of :func:`~minilisten.lm.default_backbone`) for one stage.

    ``lr_codes_*``: one ``(T // 8,)`` int array per segment (stage 2). ``modalities``: ``"W+SA+emo"``
    etc. (default: the model's, or all three). ``stage`` / ``steps`` / ``overrides`` set the fields of
    :class:`TrainConfig` (on top of ``config`` when given; default stage 2). With
    ``out_dir`` the model + optimizer are saved at evaluations and at the end; ``resume=True``
    continues from there. Returns the model in eval mode; ``model.train_log`` holds the history.
    """
    given = {k: v for k, v in (("stage", stage), ("steps", steps)) if v is not None}
    tc = TrainConfig(**{**(asdict(config) if config is not None else {}), **overrides, **given})
    torch.manual_seed(tc.seed)
    start, history, opt_state_dir = 0, [], None
    if resume:
        if out_dir is None or not (Path(out_dir) / "train_state.json").is_file():
            raise FileNotFoundError(f"resume: no training state in {str(out_dir)!r} (expected train_state.json)")
        model = ListenerLM.from_pretrained(out_dir)
        opt_state_dir = out_dir
        if modalities is not None and check_modalities(modalities) != model.modalities:
            raise ValueError(f"resume: {str(out_dir)!r} was trained with modalities {'+'.join(model.modalities)}, "
                             f"got {modalities!r}")
    elif model is None:
        bb, tok = default_backbone(corpus_words(train_segments), seed=tc.seed, **(backbone or {}))
        mods = check_modalities(modalities) if modalities is not None else LMConfig().modalities
        model = ListenerLM(bb, tok, LMConfig(modalities=mods, n_sa=n_sa, n_lr=n_lr, **(lm_config or {})))
    if modalities is not None and not resume:
        model.config.modalities = check_modalities(modalities)
    r = model.config.r
    codes_tr = _check_codes(train_segments, lr_codes_train, r, "lr_codes_train")
    codes_va = _check_codes(val_segments, lr_codes_val, r, "lr_codes_val") if val_segments else None
    if tc.stage == 2 and (codes_tr is None or (val_segments and codes_va is None)):
        raise ValueError("stage 2: expected LR codes for the training and validation segments (lr_codes_train/_val)")
    for name, cs in (("lr_codes_train", codes_tr), ("lr_codes_val", codes_va)):
        for c in cs or []:
            if c.size and c.max() >= model.vocab.n_lr:
                raise ValueError(f"{name}: expected codes < V_LR = {model.vocab.n_lr}, got {c.max()}")
    model.to(tc.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    if opt_state_dir is not None:
        info = load_train_state(opt_state_dir, opt)
        if info.get("stage") != tc.stage:
            raise ValueError(f"resume: {str(out_dir)!r} holds a stage-{info.get('stage')} run, --stage {tc.stage} requested")
        start, history = int(info["step"]), list(info.get("history", []))
        if tc.steps < start:
            raise ValueError(f"--steps ({out_dir}): expected >= the saved step {start} to resume, got {tc.steps}")
    items = _windows(train_segments, tc.window, r, r)
    n_val = tc.val_windows

    def validate(step):
        if not val_segments:
            return None
        res = evaluate_lm(model, val_segments, codes_va, tc.stage, tc.window, n_val) | {"step": step}
        history.append(res)
        if log:
            what = "LR acc" if tc.stage == 2 else "next-token acc"
            log(f"[val step {step}] loss {res['loss']:.4f} {what} {res['acc']:.4f} ({res['count']} tokens)")
        return res

    def save(step):
        if out_dir is None:
            return
        with checkpoint_transaction(out_dir, step) as stage:   # model + train state: one atomic set
            model.save_pretrained(stage)
            save_train_state(stage, opt, {"step": step, "stage": tc.stage, "history": history, "config": asdict(tc)})
        atomic_write_text(Path(out_dir) / "train_log.json", json.dumps(history, indent=1))

    from tqdm.auto import tqdm
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not tc.progress,
               desc=f"train-lm stage {tc.stage} {'+'.join(model.modalities)}", dynamic_ncols=True)
    ema, t0 = None, time.time()
    for step in bar:
        # data order, LR noise and dropout are functions of (seed, step): --resume continues exactly
        rng = np.random.default_rng([tc.seed, step])
        torch.manual_seed(tc.seed * 1_000_003 + step)
        batch_items = [items[k] for k in rng.integers(0, len(items), tc.batch_size)]
        seqs = _sequences(model, train_segments, codes_tr, batch_items, tc.window, tc.stage)
        gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = tc.lr_at(step)
        loss, st = model.loss(collate(seqs, model.vocab.pad), tc.stage, tc.lr_noise if tc.stage == 2 else 0.0, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train-lm: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        cur = (loss.item(), st["correct"] / max(st["count"], 1))
        ema = cur if ema is None else (0.9 * ema[0] + 0.1 * cur[0], 0.9 * ema[1] + 0.1 * cur[1])
        bar.set_postfix(loss=f"{ema[0]:.3f}", acc=f"{ema[1]:.3f}", refresh=False)
        done = step + 1
        if tc.eval_every and done % tc.eval_every == 0 and done < tc.steps:
            validate(done)
            model.train()
            if not tc.save_every:
                save(done)
        if tc.save_every and done % tc.save_every == 0 and done < tc.steps:
            save(done)
    bar.close()
    model.train_seconds = time.time() - t0
    if start < tc.steps or not history:
        validate(tc.steps)
    save(tc.steps)
    model.train_log = history
    return model.eval()


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minilisten train-lm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory (model, tokenizer, train state)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--init", metavar="DIR", help="start from a saved ListenerLM (e.g. the stage-1 checkpoint)")
    p.add_argument("--backbone", default="default",
                   help="'default' (a small LM from scratch, see --arch, + BPE on the corpus words), a hub name or a local directory")
    p.add_argument("--modalities", default=None,
                   help="speaker modalities, e.g. W, W+emo, W+SA+emo (default: those of --init / --resume, else all "
                        "that the data has)")
    p.add_argument("--word-placement", choices=("eq1", "lm_listener"), default=None,
                   help="word-to-step rule (default: that of --init, else eq1)")
    p.add_argument("--history-tokens", type=int, default=48, help="W^h budget in tokens")
    p.add_argument("--max-len", type=int, default=0, help="context limit (0 = the backbone's)")
    g = p.add_argument_group("default backbone size")
    g.add_argument("--arch", choices=DEFAULT_ARCHS, default="llama",
                   help="layout of the from-scratch default: llama (rotary positions; learns the interleaved "
                        "sequences faster from scratch) or gpt2 (learned absolute positions)")
    g.add_argument("--n-layer", type=int, default=2)
    g.add_argument("--n-embd", type=int, default=128)
    g.add_argument("--n-head", type=int, default=4)
    g = p.add_argument_group("LoRA (LLaMA family; needs peft)")
    g.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for llama/mistral/qwen backbones, off otherwise")
    g.add_argument("--lora-r", type=int, default=16)
    g = add_data_args(p)
    g.add_argument("--codes", default="kmeans",
                   help="LR codes for stage 2: 'vqvae:DIR' (a trained VQ-VAE), 'kmeans' (k-means of listener motion "
                        "groups, no VQ-VAE) or an .npz file with one array per segment name")
    g.add_argument("--n-lr", type=int, default=256, help="V_LR (k for --codes kmeans)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--window", type=int, default=240, help="training window in frames (multiple of 8)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--warmup", type=int, default=30)
    g.add_argument("--lr-decay-step", type=int, default=None)
    g.add_argument("--lr-after", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--lr-noise", type=float, default=0.5, help="stage 2: fraction of input LR tokens made random")
    g.add_argument("--paper-schedule", action="store_true",
                   help="paper's steps/lr/decay/batch for the stage (overrides those options)")
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--val-windows", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")
    g.add_argument("--no-progress", action="store_true")
    return p


def _load_data(a):
    ds, what = load_data(a)
    return ds, what, ds.train, ds.val


def _load_codes(spec: str, train, val, n_lr: int, seed: int, device: str):
    if spec == "kmeans":
        tr, (va,) = motion_kmeans_codes(train, [val], k=n_lr, seed=seed)
        return tr, va, n_lr
    if spec.startswith("vqvae:"):
        from .vqvae import VQVAE
        vq = VQVAE.from_pretrained(spec[len("vqvae:"):]).to(device).eval()
        return vqvae_codes(vq, train, device), vqvae_codes(vq, val, device), int(vq.codebook.shape[0])
    p = Path(spec)
    if p.suffix == ".npz" and p.is_file():
        z = np.load(p)
        missing = [s.name for s in train + val if s.name not in z.files]
        if missing:
            raise ValueError(f"--codes {spec}: no codes for segments {missing[:5]} (keys are segment names)")
        return [z[s.name] for s in train], [z[s.name] for s in val], n_lr
    raise ValueError(f"--codes: expected 'kmeans', 'vqvae:DIR' or an existing .npz file, got {spec!r}")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    tc_kw = dict(stage=a.stage, steps=a.steps, batch_size=a.batch_size, window=a.window, lr=a.lr, warmup=a.warmup,
                 lr_decay_step=a.lr_decay_step, lr_after=a.lr_after, weight_decay=a.weight_decay, lr_noise=a.lr_noise,
                 eval_every=a.eval_every, val_windows=a.val_windows, seed=a.seed, device=a.device,
                 progress=not a.no_progress)
    if a.paper_schedule:
        tc_kw.update(PAPER_SCHEDULE[a.stage])
    tc = TrainConfig(**tc_kw)
    ds, what, train, val = _load_data(a)
    have = available_modalities(train + val)
    if a.modalities:
        want = check_modalities(a.modalities)
        lacking = [m for m in want if m not in have]
        if lacking:
            raise ValueError(f"--modalities {a.modalities}: {what} has no {', '.join(MODALITY_FIELD[m] for m in lacking)} "
                             f"in every train/val segment; expected a subset of its modalities {'+'.join(have) or 'none'}")
    elif not (a.resume or a.init) and have != MODALITIES:
        print(f"{what}: training on the speaker modalities it has, {'+'.join(have)}")
    n_sa = resolve_n_sa(ds, train + val)
    codes_tr = codes_va = None
    n_lr = a.n_lr
    if a.stage == 2:
        codes_tr, codes_va, n_lr = _load_codes(a.codes, train, val, a.n_lr, a.seed, a.device)
    lm_kw = dict(word_placement=a.word_placement or "eq1", history_tokens=a.history_tokens, max_len=a.max_len)
    model = None
    if a.resume:
        pass
    elif a.init:
        model = ListenerLM.from_pretrained(a.init)
        if a.word_placement:
            model.config.word_placement = a.word_placement
        if a.stage == 2 and model.vocab.n_lr != n_lr:
            raise ValueError(f"--init {a.init}: the model has V_LR = {model.vocab.n_lr} but the LR codes come from a "
                             f"codebook of {n_lr}; train stage 1 with --n-lr {n_lr}")
    elif a.backbone != "default":
        bb, tok = load_backbone(a.backbone)
        lora = a.lora if a.lora is not None else bb.config.model_type in ("llama", "mistral", "qwen2", "gemma")
        model = ListenerLM(bb, tok, LMConfig(modalities=check_modalities(a.modalities or "+".join(have)), n_sa=n_sa,
                                             n_lr=n_lr, lora=lora, lora_r=a.lora_r, **lm_kw))
    if a.resume and a.modalities:
        raise ValueError("--resume continues the saved run with its modalities; drop --modalities")
    modalities = a.modalities if (a.modalities or model is not None or a.resume) else "+".join(have)
    t0 = time.time()
    model = train_lm(train, val, codes_tr, codes_va, stage=a.stage, modalities=modalities, model=model, config=tc,
                     out_dir=a.out, resume=a.resume, n_sa=n_sa, n_lr=n_lr, lm_config=lm_kw,
                     backbone=dict(n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, arch=a.arch))
    last = model.train_log[-1] if model.train_log else {}
    print(json.dumps({"out": a.out, "stage": a.stage, "modalities": "+".join(model.modalities),
                      "val_loss": last.get("loss"), "val_acc": last.get("acc"), "seconds": round(time.time() - t0, 1)}))
    return 0
