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

from . import distributed
from .checkpoint import atomic_write_text
from .cli_config import ArgumentParser, add_dataclass_args, dataclass_kwargs
from .data.cli import add_data_args, load_data
from .data.coverage import MODALITY_FIELD, available_modalities, resolve_n_sa
from .data.segment import Segment
from .lm import DEFAULT_ARCHS, ListenerLM, LMConfig, default_backbone, load_backbone
from .tokens import IGNORE, MODALITIES, check_modalities, collate
from .train_vq import check_scale
from .training import TrainLoop, renamed_kwargs, step_decay

PAPER_SCHEDULE = {1: dict(steps=60_000, learning_rate=5e-5, warmup=0, batch_size=8),
                  2: dict(steps=200_000, learning_rate=5e-5, decay_step=150_000, final_learning_rate=2.5e-6, warmup=0,
                          batch_size=8)}

#: old TrainConfig names -> new (train_state.json "config" and keyword callers): "lr" now only ever
#: means listener response (LR tokens, the paper's name), never learning rate
LM_RENAMED = {"lr": "learning_rate", "lr_decay_step": "decay_step", "lr_after": "final_learning_rate"}


@dataclass
class TrainConfig:
    stage: int = 2                    # 1: speaker tokens only (Eq. 3); 2: LR tokens (Eq. 4)
    steps: int = 300                  # optimisation steps
    batch_size: int = 8               # windows per step
    window: int = 240                 # frames per training window (multiple of r)
    learning_rate: float = 1e-3       # AdamW learning rate after warm-up
    warmup: int = 30                  # linear learning-rate warm-up steps
    decay_step: int | None = None     # step of the drop to final_learning_rate (paper stage 2: 150K)
    final_learning_rate: float | None = None  # learning rate from decay_step on (paper stage 2: 2.5e-6)
    betas: tuple[float, float] = (0.5, 0.99)  # AdamW betas
    weight_decay: float = 0.01        # AdamW weight decay
    grad_clip: float = 1.0            # gradient-norm clip (0: none)
    lr_noise: float = 0.5             # stage 2: fraction of input LR tokens replaced by random codes
    eval_every: int = 100             # validate every N steps (0: only at the end)
    val_windows: int = 64             # validation windows (0 = all)
    save_every: int = 0               # save every N steps (0 = at evaluations and at the end)
    seed: int = 0                     # seed of data order, LR noise and dropout
    device: str = "cpu"               # torch device
    progress: bool = True             # progress bar
    precision: str = "fp32"           # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler)
    grad_accum: int = 1               # micro-batches per step (batch_size: the global batch, all processes)
    grad_checkpointing: bool = False  # recompute layer activations in backward (less memory, ~1/3 more compute)
    compile: bool = False             # torch.compile the transformer's forward/backward (compiles on the first steps)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a dict with current or old field names (e.g. an old ``train_state.json``'s ``config``)."""
        return cls(**renamed_kwargs(d, LM_RENAMED, "TrainConfig"))

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
        check_scale(self.precision, self.grad_accum, self.batch_size)

    def schedule(self):
        """Learning rate of each step (:func:`~minilisten.training.step_decay`)."""
        return step_decay(self.learning_rate, self.warmup, self.decay_step, self.final_learning_rate)


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
    head; stage 1: next W/SA/emo token through the LM head). Under torchrun: call on every rank."""
    codes = _check_codes(segments, codes, model.config.r, "lr_codes") if stage == 2 else None
    if stage == 2 and codes is None:
        raise ValueError("evaluate_lm: stage 2 needs LR codes")
    was = model.training
    model.eval()
    items = val_items(segments, window, model.config.r, max_windows)
    lo, hi = distributed.shard_bounds(len(items))   # torchrun: each rank its shard, sums reduced
    tot_loss = correct = count = 0.0
    for k in range(lo, hi, batch_size):
        seqs = _sequences(model, segments, codes, items[k:min(k + batch_size, hi)], window, stage)
        loss, st = model.loss(collate(seqs, model.vocab.pad), stage)
        tot_loss += loss.item() * st["count"]
        correct += st["correct"]
        count += st["count"]
    model.train(was)
    if distributed.get_env().distributed:
        red = distributed.all_reduce_sums({"loss": tot_loss, "correct": correct, "count": count})
        tot_loss, correct, count = red["loss"], red["correct"], red["count"]
    return {"loss": tot_loss / max(count, 1), "acc": correct / max(count, 1), "count": int(count)}


def lr_accuracy(model: ListenerLM, segments: list[Segment], codes, window: int = 240, max_windows: int = 0) -> float:
    """Teacher-forced validation LR-token accuracy (fraction of LR tokens whose argmax is right)."""
    return evaluate_lm(model, segments, codes, 2, window, max_windows)["acc"]


# ----------------------------------------------------------------------------- LR codes
def motion_kmeans_codes(train_segments: list[Segment], other: list[list[Segment]] = (), k: int = 256, r: int = 8,
                        seed: int = 0, iters: int = 15) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """A VQ-VAE-free LR tokenization for experiments: each segment's listener motion minus its
    per-coefficient mean over the segment (removes the identity's resting face), in units of the
    training set's per-coefficient std; each group of ``r`` frames -> features ``[mean (56),
    last - first (56)]`` standardized on the training set -> nearest of ``k`` k-means centroids.
    Returns ``(train_codes, [codes of each list in other])``."""
    from .speaker import _nearest_code, kmeans

    centered = lambda s: torch.tensor(s.listener_motion[:s.T // r * r], dtype=torch.float64)  # noqa: E731
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
        m = torch.tensor(s.listener_motion[:T])[None].to(device)
        beta = None if s.listener_beta is None else torch.tensor(s.listener_beta)[None].to(device)
        out.append(vq.encode(m, beta)[0].cpu().numpy().astype(np.int64))
    return out


# ----------------------------------------------------------------------------- training
def corpus_words(segments: list[Segment]) -> list[str]:
    return [w.text for s in segments for w in s.history_words + s.words]


def _flops_per_token(model: ListenerLM, tc: TrainConfig) -> float:
    """Training FLOPs per token (:func:`~minilisten.distributed.lm_flops_per_token`) of ``model``'s
    backbone: its 2-D weights except the token/position embeddings, the attention term at the
    context limit's length (an overestimate for shorter sequences; MFU is an estimate)."""
    cfg = model._base().config.get_text_config()
    n_layer = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 1)
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1)
    emb = {id(model._base().get_input_embeddings().weight)}
    n = sum(p.numel() for name, p in model.named_parameters()
            if p.dim() == 2 and id(p) not in emb and not any(k in name for k in ("wpe", "embed_positions", "embed")))
    seq = min(getattr(cfg, "max_position_embeddings", 1024) or 1024, 1024)
    return distributed.lm_flops_per_token(n, n_layer, d, seq)


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
    overrides = renamed_kwargs(overrides, LM_RENAMED, "train_lm")
    tc = TrainConfig(**{**(asdict(config) if config is not None else {}), **overrides, **given})
    torch.manual_seed(tc.seed)
    if resume:
        if out_dir is None or not (Path(out_dir) / "train_state.json").is_file():
            raise FileNotFoundError(f"resume: no training state in {str(out_dir)!r} (expected train_state.json)")
        model = ListenerLM.from_pretrained(out_dir)
        if modalities is not None and check_modalities(modalities) != model.modalities:
            raise ValueError(f"resume: {str(out_dir)!r} was trained with modalities {'+'.join(model.modalities)}, "
                             f"got {modalities!r}")
    elif model is None:
        bb, tok = default_backbone(corpus_words(train_segments), seed=tc.seed, **(backbone or {}))
        mods = check_modalities(modalities) if modalities is not None else LMConfig().modalities
        model = ListenerLM(bb, tok, LMConfig(modalities=mods, n_sa=n_sa, n_lr=n_lr, **(lm_config or {})))
    if modalities is not None and not resume:
        model.config.modalities = check_modalities(modalities)
    fps = {float(s.fps) for s in list(train_segments) + list(val_segments or [])}
    if len(fps) > 1:
        raise ValueError(f"train_segments/val_segments: expected one frame rate, got {sorted(fps)} fps")
    if fps and resume and model.config.fps != min(fps):
        raise ValueError(f"resume: {str(out_dir)!r} was trained at {model.config.fps:g} fps, the data is {min(fps):g} fps")
    if fps:
        model.config.fps = min(fps)   # the frame rate the model is trained at (streaming checks it)
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
    if tc.grad_checkpointing:
        model.enable_gradient_checkpointing()
    if tc.compile:
        model.compile_transformer()
    distributed.broadcast_tensors(list(model.state_dict().values()))   # every rank starts from rank 0's weights
    main = distributed.is_main()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.learning_rate, betas=tc.betas, weight_decay=tc.weight_decay)
    items = _windows(train_segments, tc.window, r, r)

    def validate(step):
        if not val_segments:
            return None
        res = evaluate_lm(model, val_segments, codes_va, tc.stage, tc.window, tc.val_windows)
        if log and main:
            what = "LR acc" if tc.stage == 2 else "next-token acc"
            log(f"[val step {step}] loss {res['loss']:.4f} {what} {res['acc']:.4f} ({res['count']} tokens)")
        return res

    loop = TrainLoop(model, opt, steps=tc.steps, schedule=tc.schedule(), out_dir=out_dir, eval_every=tc.eval_every,
                     save_every=tc.save_every, save_at_eval=not tc.save_every, validate=validate,
                     save_model=model.save_pretrained, extra_state=lambda: {"stage": tc.stage, "config": asdict(tc)},
                     after_save=lambda step: atomic_write_text(Path(out_dir) / "train_log.json",
                                                               json.dumps(loop.history, indent=1)),
                     grad_clip=tc.grad_clip, params=params, progress=tc.progress, ema=0.9,
                     desc=f"train-lm stage {tc.stage} {'+'.join(model.modalities)}",
                     postfix=dict(loss=".3f", acc=".3f"), precision=tc.precision, grad_accum=tc.grad_accum,
                     device=tc.device, samples_per_step=tc.batch_size, flops_per_token=_flops_per_token(model, tc),
                     log=log if main else None)
    if resume:
        def same_stage(info):
            if info.get("stage") != tc.stage:
                raise ValueError(f"resume: {str(out_dir)!r} holds a stage-{info.get('stage')} run, "
                                 f"--stage {tc.stage} requested")
        loop.resume(check=same_stage)

    env = distributed.get_env()
    micro = tc.batch_size // tc.grad_accum
    mine = distributed.rank_slice(micro, what="--batch-size / --grad-accum")
    step_data = {}

    def step_fn(step, k=0):
        # data order, LR noise and dropout are functions of (seed, step): --resume continues exactly.
        # Every rank draws the same global batch and takes its slice of micro-batch k (the order does
        # not depend on the number of processes); dropout and LR noise are seeded per rank too.
        if k == 0:
            rng = np.random.default_rng([tc.seed, step])
            drawn = rng.integers(0, len(items), tc.batch_size)
            batches = [collate(_sequences(model, train_segments, codes_tr,
                                          [items[j] for j in drawn[i * micro:(i + 1) * micro][mine]], tc.window,
                                          tc.stage), model.vocab.pad) for i in range(tc.grad_accum)]
            # token-weighted: the step's loss is the mean over all targets of the global batch
            w = distributed.count_weights([int((b["targets"] != IGNORE).sum()) for b in batches])
            step_data.update(batches=batches, w=w)
        seed = tc.seed * 1_000_003 + step + 7_919 * (env.rank + env.world_size * k)   # = the old seed on rank 0, k 0
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        batch, w = step_data["batches"][k], step_data["w"][k]
        loss, st = model.loss(batch, tc.stage, tc.lr_noise if tc.stage == 2 else 0.0, gen)
        loss = loss * w if w != 1.0 else loss
        return loss, {"loss": loss.item(), "acc": w * st["correct"] / max(st["count"], 1),
                      "tokens": int(batch["attention_mask"].sum())}

    model.train_log = loop.run(step_fn)
    return model.eval()


# ----------------------------------------------------------------------------- CLI
#: LMConfig fields on the command line; TrainConfig fields not on it (--stage is required, --no-progress)
LM_FIELDS = ("word_placement", "history_tokens", "max_len")
TRAIN_SKIP = ("stage", "progress")


def _parser() -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The parser, the LMConfig option names and the TrainConfig option names."""
    p = ArgumentParser(prog="python -m minilisten train-lm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True, help="1: speaker tokens only; 2: LR tokens")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory (model, tokenizer, train state)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--init", metavar="DIR", help="start from a saved ListenerLM (e.g. the stage-1 checkpoint)")
    p.add_argument("--backbone", default="default",
                   help="'default' (a small LM from scratch, see --arch, + BPE on the corpus words), a hub name or a local directory")
    p.add_argument("--modalities", default=None,
                   help="speaker modalities, e.g. W, W+emo, W+SA+emo (default: those of --init / --resume, else all "
                        "that the data has)")
    g = p.add_argument_group("LM (LMConfig)")
    lm_names = add_dataclass_args(g, LMConfig, only=LM_FIELDS, choices={"word_placement": ("eq1", "lm_listener")},
                                  defaults={"word_placement": "that of --init, else eq1"})
    g = p.add_argument_group("default backbone size")
    g.add_argument("--arch", choices=DEFAULT_ARCHS, default="llama",
                   help="layout of the from-scratch backbone: llama (rotary positions; learns the interleaved "
                        "sequences faster from scratch) or gpt2 (learned absolute positions) (default: %(default)s)")
    g.add_argument("--n-layer", type=int, default=2, help="layers (default: %(default)s)")
    g.add_argument("--n-embd", type=int, default=128, help="width (default: %(default)s)")
    g.add_argument("--n-head", type=int, default=4, help="attention heads (default: %(default)s)")
    g = p.add_argument_group("LoRA (LLaMA family; needs peft)")
    lm_names += add_dataclass_args(g, LMConfig, only=("lora", "lora_r"), help={"lora_r": "LoRA rank"},
                                   defaults={"lora": "on for llama/mistral/qwen backbones, off otherwise"})
    g = add_data_args(p)
    g.add_argument("--codes", default="kmeans",
                   help="LR codes for stage 2: 'vqvae:DIR' (a trained VQ-VAE), 'kmeans' (k-means of listener motion "
                        "groups, no VQ-VAE) or an .npz file with one array per segment name (default: %(default)s)")
    g.add_argument("--n-lr", type=int, default=256, help="V_LR (k for --codes kmeans) (default: %(default)s)")
    g = p.add_argument_group("optimisation (TrainConfig)")
    g.add_argument("--paper-schedule", action="store_true",
                   help="paper's steps/learning rate/decay/batch for the stage (overrides those options)")
    train_names = add_dataclass_args(g, TrainConfig, skip=TRAIN_SKIP, choices={"precision": distributed.PRECISIONS})
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p, lm_names, train_names


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
    """``python -m minilisten train-lm`` (also under ``torchrun --nproc_per_node N -m minilisten train-lm``)."""
    p, lm_names, train_names = _parser()
    a = p.parse_args(argv)
    tc_kw = dict(dataclass_kwargs(a, train_names), stage=a.stage, progress=not a.no_progress)
    if a.paper_schedule:
        tc_kw.update(PAPER_SCHEDULE[a.stage])
    env, tc_kw["device"] = distributed.init_distributed(tc_kw.get("device", TrainConfig.device))
    try:
        code = _main_train(a, p, lm_names, TrainConfig(**tc_kw))
    finally:
        distributed.shutdown()
    return distributed.finish(code, env)


def _main_train(a, p, lm_names, tc: TrainConfig) -> int:
    ds, what, train, val = _load_data(a)
    have = available_modalities(train + val)
    if a.modalities:
        want = check_modalities(a.modalities)
        lacking = [m for m in want if m not in have]
        if lacking:
            raise ValueError(f"--modalities {a.modalities}: {what} has no {', '.join(MODALITY_FIELD[m] for m in lacking)} "
                             f"in every train/val segment; expected a subset of its modalities {'+'.join(have) or 'none'}")
    elif not (a.resume or a.init) and have != MODALITIES and distributed.is_main():
        print(f"{what}: training on the speaker modalities it has, {'+'.join(have)}")
    n_sa = resolve_n_sa(ds, train + val)
    codes_tr = codes_va = None
    n_lr = a.n_lr
    if a.stage == 2:
        codes_tr, codes_va, n_lr = _load_codes(a.codes, train, val, a.n_lr, tc.seed, tc.device)
    given = dataclass_kwargs(a, lm_names)
    lm_kw = {k: v for k, v in given.items() if k in LM_FIELDS}
    model = None
    if a.resume:
        pass
    elif a.init:
        model = ListenerLM.from_pretrained(a.init)
        if "word_placement" in given:
            model.config.word_placement = given["word_placement"]
        if a.stage == 2 and model.vocab.n_lr != n_lr:
            raise ValueError(f"--init {a.init}: the model has V_LR = {model.vocab.n_lr} but the LR codes come from a "
                             f"codebook of {n_lr}; train stage 1 with --n-lr {n_lr}")
    elif a.backbone != "default":
        bb, tok = load_backbone(a.backbone)
        lora = given.get("lora", bb.config.model_type in ("llama", "mistral", "qwen2", "gemma"))
        lora_r = given.get("lora_r", LMConfig.lora_r)
        model = ListenerLM(bb, tok, LMConfig(modalities=check_modalities(a.modalities or "+".join(have)), n_sa=n_sa,
                                             n_lr=n_lr, lora=lora, lora_r=lora_r, **lm_kw))
    if a.resume and a.modalities:
        raise ValueError("--resume continues the saved run with its modalities; drop --modalities")
    modalities = a.modalities if (a.modalities or model is not None or a.resume) else "+".join(have)
    t0 = time.time()
    model = train_lm(train, val, codes_tr, codes_va, stage=a.stage, modalities=modalities, model=model, config=tc,
                     out_dir=a.out, resume=a.resume, n_sa=n_sa, n_lr=n_lr, lm_config=lm_kw,
                     backbone=dict(n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, arch=a.arch))
    if not distributed.is_main():
        return 0
    last = model.train_log[-1] if model.train_log else {}
    print(json.dumps({"out": a.out, "stage": a.stage, "modalities": "+".join(model.modalities),
                      "val_loss": last.get("loss"), "val_acc": last.get("acc"), "seconds": round(time.time() - t0, 1)}))
    return 0
