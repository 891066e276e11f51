"""Two-stage training of the listener LM (paper §3.1, supplement §4): ``python -m minilisten train-lm``.
Stage 1 (Eq. 3): next-token loss on speaker-only sequences; stage 2 (Eq. 4): LR-head loss on LR tokens, a
fraction ``lr_noise`` of input LR tokens random (LM-listener). Data: random ``window``-frame windows. CLI::

    python -m minilisten train-lm --stage 1 --out runs/lm1 --modalities W+SA+emo
    python -m minilisten train-lm --stage 2 --init runs/lm1 --out runs/lm2 --codes vqvae:runs/vq
    python -m minilisten train-lm --stage 2 --out runs/lm2 --resume          # continue
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .cli_config import ArgumentParser, add_dataclass_args, dataclass_kwargs
from .data.cli import add_data_args, load_data
from .data.coverage import MODALITY_FIELD, available_modalities, resolve_n_sa, with_val_split
from .data.segment import Segment
from .errors import UserError
from .lm import DEFAULT_ARCHS, ListenerLM, LMConfig, default_backbone, load_backbone
from .tokens import IGNORE, MODALITIES, check_modalities, collate
from .training import LoopConfig, TrainLoop, check_ints, data_fps, fitted, loop_args, merged, windows

PAPER_SCHEDULE = {1: dict(steps=60_000, learning_rate=5e-5, warmup=0, batch_size=8),
                  2: dict(steps=200_000, learning_rate=5e-5, decay_step=150_000, final_learning_rate=2.5e-6, warmup=0,
                          batch_size=8)}


@dataclass
class TrainConfig(LoopConfig):
    """How :func:`train_lm` trains one stage (CPU defaults; :data:`PAPER_SCHEDULE` the paper's)."""
    betas: tuple[float, float] = (0.5, 0.99)
    stage: int = 2                    # 1: speaker tokens only (Eq. 3); 2: LR tokens (Eq. 4)
    window: int = 240                 # frames per training window (a multiple of r; fitted to the data)
    lr_noise: float = 0.5             # stage 2: fraction of input LR tokens replaced by random codes
    val_windows: int = 64             # validation windows (0 = all)
    grad_checkpointing: bool = False  # recompute layer activations in backward (less memory, ~1/3 more compute)
    compile: bool = False             # torch.compile the transformer's forward/backward (compiles on the first steps)

    def __post_init__(self):
        super().__post_init__()
        if self.stage not in (1, 2):
            raise UserError(f"stage: expected 1 or 2, got {self.stage!r}")
        check_ints({"window": self.window}, 1)
        if not 0 <= self.lr_noise < 1:
            raise UserError(f"lr_noise: expected a fraction in [0, 1), got {self.lr_noise}")


def _check_codes(segments: list[Segment], codes, r: int, name: str, n_lr: int) -> list[np.ndarray] | None:
    """One int64 ``(T // r,)`` array of codes in ``[0, n_lr)`` per segment (None stays None)."""
    if codes is None:
        return None
    if len(codes) != len(segments):
        raise UserError(f"{name}: expected one code array per segment ({len(segments)}), got {len(codes)}")
    out = []
    for i, (s, c) in enumerate(zip(segments, codes)):
        c = c.detach().cpu().numpy() if torch.is_tensor(c) else np.asarray(c)
        ok = c.shape == (s.T // r,) and np.issubdtype(c.dtype, np.integer)
        if not ok or (c.size and not 0 <= c.min() <= c.max() < n_lr):
            span = f"min {c.min()}, max {c.max()}" if c.size else "no codes"
            raise UserError(f"{name}[{i}] ({s.name!r}): expected shape (T // r,) = ({s.T // r},) of integer codes in "
                            f"[0, V_LR = {n_lr}), got shape {c.shape}, dtype {c.dtype}, {span}")
        out.append(c.astype(np.int64))
    return out


def _sequences(model: ListenerLM, segments, codes, items, window: int, stage: int):
    r = model.config.r
    seqs = []
    for i, s0 in items:
        w = segments[i].window(s0, window)
        c = None if stage == 1 else codes[i][s0 // r: (s0 + window) // r]
        seqs += model.build_sequences(w, c)
    return seqs


@torch.no_grad()
def evaluate_lm(model: ListenerLM, segments: list[Segment], codes=None, stage: int = 2, window: int = 240,
                max_windows: int = 0, batch_size: int = 8) -> dict:
    """Teacher-forced validation on non-overlapping windows, round-robin over segments: ``{"loss", "acc",
    "count"}`` (stage 2: LR tokens, LR head; stage 1: next W/SA/emo token). Under torchrun: on every rank."""
    codes = _check_codes(segments, codes, model.config.r, "lr_codes", model.vocab.n_lr) if stage == 2 else None
    if stage == 2 and codes is None:
        raise UserError("evaluate_lm: stage 2 needs LR codes")
    was = model.training
    model.eval()
    per = [[(i, s0) for s0 in range(0, s.T - window + 1, window)] for i, s in enumerate(segments)]
    items = [p[k] for k in range(max(map(len, per), default=0)) for p in per if k < len(p)]
    items = items[:max_windows] if max_windows else items
    lo, hi = distributed.shard_bounds(len(items))   # torchrun: each rank its shard, sums reduced
    tot_loss = correct = count = 0.0
    for k in range(lo, hi, batch_size):
        seqs = _sequences(model, segments, codes, items[k:min(k + batch_size, hi)], window, stage)
        loss, st = model.loss(collate(seqs, model.vocab.pad), stage)
        tot_loss += loss.item() * st["count"]
        correct += st["correct"]
        count += st["count"]
    model.train(was)
    red = distributed.all_reduce_sums({"loss": tot_loss, "correct": correct, "count": count})
    return {"loss": red["loss"] / max(red["count"], 1), "acc": red["correct"] / max(red["count"], 1),
            "count": int(red["count"])}


def motion_kmeans_codes(train_segments: list[Segment], other: list[list[Segment]] = (), k: int = 256, r: int = 8,
                        seed: int = 0, iters: int = 15) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """LR codes without a VQ-VAE: groups of ``r`` frames of the segment-centred, standardised listener
    motion -> ``[mean, last - first]`` -> nearest of ``k`` k-means centroids. ``(train codes, [other codes])``."""
    from .kernels.nearest_code import nearest_code as _nearest_code
    from .speaker import kmeans

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
    def codes(s: Segment) -> np.ndarray:
        m = torch.tensor(s.listener_motion[:s.T - s.T % vq.rate])[None].to(device)
        beta = None if s.listener_beta is None else torch.tensor(s.listener_beta)[None].to(device)
        return vq.encode(m, beta)[0].cpu().numpy().astype(np.int64)
    return [codes(s) for s in segments]


def corpus_words(segments: list[Segment]) -> list[str]:
    return [w.text for s in segments for w in s.history_words + s.words]


def _flops_per_token(model: ListenerLM) -> float:
    """Training FLOPs per token of the backbone (2-D weights but embeddings; attention at the context limit)."""
    cfg = model._base().config.get_text_config()   # HF's attribute maps give GPT-2's n_layer / n_embd these names
    emb = id(model._base().get_input_embeddings().weight)
    n = sum(p.numel() for name, p in model.named_parameters()
            if p.dim() == 2 and id(p) != emb and "wpe" not in name and "embed" not in name)
    seq = min(getattr(cfg, "max_position_embeddings", 1024) or 1024, 1024)
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq   # 6 N + 12 L d T (PaLM appendix)


def train_lm(train_segments: list[Segment], val_segments: list[Segment], lr_codes_train=None, lr_codes_val=None,
             modalities=None, model: ListenerLM | None = None, config: TrainConfig | None = None, out_dir=None,
             resume: bool = False, n_sa: int = 1024, n_lr: int = 256, backbone: dict | None = None,
             lm_config: dict | None = None, log=print, **overrides) -> ListenerLM:
    """Train ``model`` (or a fresh default backbone sized by ``backbone``, BPE on the training words) for one
    stage; ``lr_codes_*``: one ``(T // 8,)`` int array per segment (stage 2); ``overrides`` (``stage``,
    ``steps``, ...) set :class:`TrainConfig` fields. Returns it in eval mode with ``train_log``."""
    tc = merged(TrainConfig, config, **overrides)
    torch.manual_seed(tc.seed)
    if resume:
        if out_dir is None or not (Path(out_dir) / "train_state.json").is_file():
            raise UserError(f"resume: expected a training state in {str(out_dir)!r} (train_state.json), got none")
        model = ListenerLM.from_pretrained(out_dir)
        if modalities is not None and check_modalities(modalities) != model.modalities:
            raise UserError(f"resume: {str(out_dir)!r} was trained with modalities {'+'.join(model.modalities)}, "
                            f"got {modalities!r}")
    elif model is None:
        bb, tok = default_backbone(corpus_words(train_segments), seed=tc.seed, **(backbone or {}))
        mods = check_modalities(modalities) if modalities is not None else LMConfig().modalities
        model = ListenerLM(bb, tok, LMConfig(modalities=mods, n_sa=n_sa, n_lr=n_lr, **(lm_config or {})))
    if modalities is not None and not resume:
        model.config.modalities = check_modalities(modalities)
    fps = data_fps(list(train_segments) + list(val_segments or []))
    if resume and model.config.fps != fps:
        raise UserError(f"resume: {str(out_dir)!r} was trained at {model.config.fps:g} fps, the data is {fps:g} fps")
    model.config.fps = fps   # the frame rate the model is trained at (streaming checks it)
    r = model.config.r
    codes_tr = _check_codes(train_segments, lr_codes_train, r, "lr_codes_train", model.vocab.n_lr)
    codes_va = _check_codes(val_segments, lr_codes_val, r, "lr_codes_val", model.vocab.n_lr) if val_segments else None
    if tc.stage == 2 and (codes_tr is None or (val_segments and codes_va is None)):
        raise UserError("stage 2: expected LR codes for the training and validation segments (lr_codes_train/_val)")
    model.to(tc.device).train()
    if tc.grad_checkpointing:
        model.enable_gradient_checkpointing()
    if tc.compile:
        model.compile_transformer()
    window = fitted(train_segments, tc.window, r, "--window", log)
    items = windows(train_segments, window, r, r)

    def validate(step):
        if not val_segments:
            return None
        res = evaluate_lm(model, val_segments, codes_va, tc.stage, window, tc.val_windows)
        if log and distributed.is_main():
            what = "LR acc" if tc.stage == 2 else "next-token acc"
            log(f"[val step {step}] loss {res['loss']:.4f} {what} {res['acc']:.4f} ({res['count']} tokens)")
        return res

    loop = TrainLoop(model, tc, out_dir=out_dir, validate=validate, save_model=model.save_pretrained, log=log,
                     desc=f"train-lm stage {tc.stage} {'+'.join(model.modalities)}",
                     postfix=dict(loss=".3f", acc=".3f"), flops_per_token=_flops_per_token(model))
    if resume and (saved := loop.resume()["config"]["stage"]) != tc.stage:
        raise UserError(f"resume: {str(out_dir)!r} holds a stage-{saved} run, --stage {tc.stage} requested")
    env = distributed.get_env()
    step_data = {}

    def step_fn(step, k):
        # data order, LR noise and dropout are functions of (seed, step, rank, k): --resume continues exactly
        if k == 0:
            drawn = np.random.default_rng([tc.seed, step]).integers(0, len(items), tc.batch_size)
            batches = [collate(_sequences(model, train_segments, codes_tr, [items[j] for j in tc.local(drawn, i)],
                                          window, tc.stage), model.vocab.pad) for i in range(tc.grad_accum)]
            # token-weighted: the step's loss is the mean over all targets of the global batch
            w = distributed.count_weights([int((b["targets"] != IGNORE).sum()) for b in batches])
            step_data.update(batches=batches, w=w)
        seed = tc.seed * 1_000_003 + step + 7_919 * (env.rank + env.world_size * k)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        batch, w = step_data["batches"][k], step_data["w"][k]
        loss, st = model.loss(batch, tc.stage, tc.lr_noise if tc.stage == 2 else 0.0, gen)
        loss = loss * w if w != 1.0 else loss
        return loss, {"loss": loss.item(), "acc": w * st["correct"] / max(st["count"], 1),
                      "tokens": int(batch["attention_mask"].sum())}

    model.train_log = loop.run(step_fn)
    return model.eval()


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
            raise UserError(f"--codes {spec}: expected codes for every segment (keys are segment names), "
                            f"got none for {missing[:5]}")
        return [z[s.name] for s in train], [z[s.name] for s in val], n_lr
    raise UserError(f"--codes: expected 'kmeans', 'vqvae:DIR' or an existing .npz file, got {spec!r}")


def main(argv: list[str] | None = None) -> int:
    """``python -m minilisten train-lm`` (also under ``torchrun --nproc_per_node N -m minilisten train-lm``)."""
    p = ArgumentParser(prog="python -m minilisten train-lm", description=__doc__.split("CLI::")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("CLI::")[1],
                       allow_abbrev=False)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True, help="1: speaker tokens only; 2: LR tokens")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory (model, tokenizer, train state)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--init", metavar="DIR", help="start from a saved ListenerLM (e.g. the stage-1 checkpoint)")
    p.add_argument("--backbone", default="default", help="'default' (a small LM from scratch, see --arch, + BPE on "
                   "the corpus words), a hub name or a local directory")
    p.add_argument("--modalities", default=None,
                   help="speaker modalities, e.g. W, W+emo, W+SA+emo (default: those of --init / --resume, else all "
                        "that the data has)")
    g = p.add_argument_group("LM (LMConfig)")
    lm_names = add_dataclass_args(g, LMConfig, only=("word_placement", "history_tokens", "max_len"),
                                  choices={"word_placement": ("eq1", "lm_listener")},
                                  defaults={"word_placement": "that of --init, else eq1"})
    g = p.add_argument_group("default backbone size")
    g.add_argument("--arch", choices=DEFAULT_ARCHS, default="llama",
                   help="layout of the from-scratch backbone: llama (rotary positions; learns the interleaved "
                        "sequences faster from scratch) or gpt2 (learned absolute positions) (default: %(default)s)")
    g.add_argument("--n-layer", type=int, default=2, help="layers (default: %(default)s)")
    g.add_argument("--n-embd", type=int, default=128, help="width (default: %(default)s)")
    g.add_argument("--n-head", type=int, default=4, help="attention heads (default: %(default)s)")
    g = p.add_argument_group("LoRA (LLaMA family; needs peft)")
    lora_names = add_dataclass_args(g, LMConfig, only=("lora", "lora_r"), help={"lora_r": "LoRA rank"},
                                    defaults={"lora": "on for llama/mistral/qwen backbones, off otherwise"})
    g = add_data_args(p)
    g.add_argument("--codes", default="kmeans",
                   help="LR codes for stage 2: 'vqvae:DIR' (a trained VQ-VAE), 'kmeans' (k-means of listener motion "
                        "groups, no VQ-VAE) or an .npz file with one array per segment name (default: %(default)s)")
    g.add_argument("--n-lr", type=int, default=256, help="V_LR (k for --codes kmeans) (default: %(default)s)")
    g = p.add_argument_group("optimisation (TrainConfig)")
    g.add_argument("--paper-schedule", action="store_true",
                   help="paper's steps/learning rate/decay/batch for the stage (overrides those options)")
    train_names = loop_args(g, TrainConfig, skip=("stage",),
                            alt_defaults={"--paper-schedule (stage 2)": PAPER_SCHEDULE[2]})
    a = p.parse_args(argv)
    if a.resume and a.modalities:
        raise UserError("--resume continues the saved run with its modalities; drop --modalities")
    tc_kw = dict(dataclass_kwargs(a, train_names), stage=a.stage)
    if a.paper_schedule:
        tc_kw.update(PAPER_SCHEDULE[a.stage])
    lm_kw, lora_kw = dataclass_kwargs(a, lm_names), dataclass_kwargs(a, lora_names)
    return distributed.launch(tc_kw.get("device", TrainConfig.device),
                              lambda env, dev: _main_train(a, lm_kw, lora_kw, TrainConfig(**dict(tc_kw, device=dev))))


def _main_train(a, lm_kw: dict, lora_kw: dict, tc: TrainConfig) -> int:
    ds, what = load_data(a)
    train, val, note = with_val_split(ds, seed=0)
    if note and distributed.is_main():
        print(f"{what}: {note}")
    have = available_modalities(train + val)
    lacking = [MODALITY_FIELD[m] for m in check_modalities(a.modalities) if m not in have] if a.modalities else []
    if lacking:
        raise UserError(f"--modalities {a.modalities}: {what} has no {', '.join(lacking)} in every train/val segment; "
                        f"expected a subset of its modalities {'+'.join(have) or 'none'}")
    if not (a.modalities or a.resume or a.init) and have != MODALITIES and distributed.is_main():
        print(f"{what}: training on the speaker modalities it has, {'+'.join(have)}")
    n_sa = resolve_n_sa(ds, train + val)
    codes_tr, codes_va, n_lr = _load_codes(a.codes, train, val, a.n_lr, tc.seed, tc.device) if a.stage == 2 \
        else (None, None, a.n_lr)
    model = None
    if a.init and not a.resume:
        model = ListenerLM.from_pretrained(a.init)
        model.config.word_placement = lm_kw.get("word_placement", model.config.word_placement)
        if a.stage == 2 and model.vocab.n_lr != n_lr:
            raise UserError(f"--init {a.init}: the model has V_LR = {model.vocab.n_lr} but the LR codes come from a "
                            f"codebook of {n_lr}; train stage 1 with --n-lr {n_lr}")
    elif a.backbone != "default" and not a.resume:
        bb, tok = load_backbone(a.backbone)
        lora = lora_kw.get("lora", bb.config.model_type in ("llama", "mistral", "qwen2", "gemma"))
        model = ListenerLM(bb, tok, LMConfig(modalities=check_modalities(a.modalities or "+".join(have)), n_sa=n_sa,
                                             n_lr=n_lr, **dict(lora_kw, lora=lora), **lm_kw))
    modalities = a.modalities if (a.modalities or model is not None or a.resume) else "+".join(have)
    t0 = time.time()
    model = train_lm(train, val, codes_tr, codes_va, modalities=modalities, model=model, config=tc, out_dir=a.out,
                     resume=a.resume, n_sa=n_sa, n_lr=n_lr, lm_config=lm_kw,
                     backbone=dict(n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, arch=a.arch))
    if not distributed.is_main():
        return 0
    last = model.train_log[-1] if model.train_log else {}
    print(json.dumps({"out": a.out, "stage": a.stage, "modalities": "+".join(model.modalities),
                      "val_loss": last.get("loss"), "val_acc": last.get("acc"), "seconds": round(time.time() - t0, 1)}))
    return 0
