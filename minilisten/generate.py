"""LR-token decoding and codes -> motion: :class:`Generator` (GPT-2 / LLaMA copy with static KV caches
``(B, n_kv, max_len + 1, D)``, gpt-fast style), :class:`HFDecoder` (any HF causal LM, lock step),
:func:`generate_nocache` (the reference). Greedy by default (the paper); :class:`Sampling` for temperature /
top-k / top-p with one seeded ``torch.Generator`` per stream. Design: docs/streaming.md, docs/speed.md.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import partial
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from .errors import UserError
from .tokens import length_batches

BUCKETS = (8, 16, 24, 32, 48, 64)
FAST_ARCHS = ("gpt2", "llama")


class ContextFullError(ValueError):
    """A stream's tokens would exceed the decoder's ``max_len`` (slide the window and re-prefill)."""


@dataclass(frozen=True)
class Sampling:
    """How an LR code is picked from the LR-head logits: ``temperature`` 0 = greedy argmax (the paper's
    decoding); else softmax(logits / T) restricted to the ``top_k`` best (0: all) and the top-``top_p`` mass."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        t, k, p = self.temperature, self.top_k, self.top_p
        for name, ok, want, got in (
                ("temperature", _real(t) and math.isfinite(t) and t >= 0, "a finite number >= 0", t),
                ("top_k", isinstance(k, int) and not isinstance(k, bool) and k >= 0, "an int >= 0", k),
                ("top_p", _real(p) and 0 < p <= 1, "a number in (0, 1]", p)):
            if not ok:
                raise UserError(f"Sampling.{name}: expected {want}, got {got!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def pick(logits: torch.Tensor, sampling: Sampling | None, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Codes ``(B,)`` from logits ``(B, V)``: argmax when greedy, else one draw per row from its own generator
    after temperature, top-k and top-p (the smallest set with cumulative probability >= top_p)."""
    if sampling is None or sampling.greedy:
        return logits.argmax(-1)
    x = (logits.float() - logits.float().amax(-1, keepdim=True)) / sampling.temperature   # no overflow at tiny T
    if 0 < sampling.top_k < x.shape[-1]:
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, x.topk(sampling.top_k, -1).indices, True)
        x = x.masked_fill(~keep, float("-inf"))
    if sampling.top_p < 1:
        srt, order = x.sort(-1, descending=True)
        p = srt.softmax(-1)
        drop = p.cumsum(-1) - p >= sampling.top_p     # the mass before a token already reaches top_p
        x = x.scatter(-1, order, srt.masked_fill(drop, float("-inf")))
    p = x.softmax(-1)
    return torch.cat([torch.multinomial(p[b], 1, generator=g) for b, g in enumerate(generators)])


def _rngs(seeds: Sequence[int] | None, n: int, device) -> list[torch.Generator]:
    """One seeded generator per stream (seeds default 0)."""
    seeds = [0] * n if seeds is None else list(seeds)
    if len(seeds) != n:
        raise UserError(f"seeds: expected one seed per stream ({n}), got {len(seeds)}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2 ** 63:
            raise UserError(f"seed: expected an int in [0, 2**63), got {s!r}")
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@dataclass
class FastConfig:
    """Shape of the backbone, read from the HF config by :meth:`FastTransformer.from_lm`."""
    arch: str                   # "gpt2" (LayerNorm, learned positions, GELU) | "llama" (RMSNorm, rotary, SwiGLU, GQA)
    n_layer: int
    n_head: int
    n_kv_head: int              # < n_head: grouped-query attention (LLaMA)
    head_dim: int
    d_model: int
    d_ff: int
    n_lr: int                   # width of the LR head
    eps: float                  # norm epsilon
    act: str                    # HF activation name (ACT2FN)
    attn_scale: tuple[float, ...]  # softmax scale per layer (GPT-2 may scale by 1/(layer+1))
    attn_bias: bool             # biases of the q, k, v and output projections
    mlp_bias: bool
    n_positions: int            # learned (GPT-2) or trained (rotary) context length


class RMSNorm(nn.Module):
    """LLaMA RMSNorm, computed in fp32 and cast back like HF's ``LlamaRMSNorm``."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def _norm(cfg: FastConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model, eps=cfg.eps) if cfg.arch == "gpt2" else RMSNorm(cfg.d_model, cfg.eps)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """Causal self-attention over static KV cache buffers ``k_cache, v_cache: (B, n_kv, max_seq + 1, D)`` (slot
    ``max_seq`` is the trash slot for padding; buffers, so ``.to()`` moves and casts them with the model)."""

    def __init__(self, cfg: FastConfig, layer: int):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.attn_bias)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.attn_bias)
        self.scale = cfg.attn_scale[layer]
        self.register_buffer("k_cache", None, persistent=False)    # set by FastTransformer.setup_caches
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x, rows, write_idx, mask, rope, K, last=None, slots=None):
        """x: (B, S, d); write_idx: (B, S) cache slot per token; mask: (B, 1, S, K) additive over keys ``[0, K)``;
        rope: (cos, sin) (B, 1, S, D) or None; last: (B, 1): attend from that position only; slots: (B,) cache rows."""
        B, S, _ = x.shape
        H, KV, D = self.n_head, self.n_kv, self.hd
        q, k, v = self.wqkv(x).split([H * D, KV * D, KV * D], dim=-1)
        q = q.view(B, S, H, D).transpose(1, 2)      # (B, H, S, D)
        k = k.view(B, S, KV, D).transpose(1, 2)     # (B, KV, S, D)
        v = v.view(B, S, KV, D)                     # (B, S, KV, D)
        if rope is not None:
            cos, sin = rope
            q = (q * cos + rotate_half(q) * sin).to(x.dtype)
            k = (k * cos + rotate_half(k) * sin).to(x.dtype)
        crow = rows if slots is None else slots[:, None]
        self.k_cache[crow, :, write_idx] = k.transpose(1, 2)   # (B, S, KV, D) into slots write_idx
        self.v_cache[crow, :, write_idx] = v
        sel = slice(B) if slots is None else slots      # the busy streams' rows only: idle slots cost nothing
        k_cache, v_cache = self.k_cache[sel, :, :K], self.v_cache[sel, :, :K]
        if last is not None:                        # only one query per stream is needed
            q = q[rows, :, last].transpose(1, 2)    # (B, H, 1, D)
            mask = mask[rows, :, last].transpose(1, 2)
            S = 1
        if KV != H:  # GQA: fold the G query heads of a KV head into the query axis (no KV copy)
            G = H // KV
            q = q.reshape(B, KV, G * S, D)
            mask = mask.repeat(1, 1, G, 1)
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=self.scale)
        y = y.reshape(B, H, S, D).transpose(1, 2).reshape(B, S, H * D)
        return self.wo(y)


class MLP(nn.Module):
    """GPT-2: ``proj(act(fc(x)))``; LLaMA (SwiGLU, fused gate|up): ``proj(act(gate(x)) * up(x))``."""

    def __init__(self, cfg: FastConfig):
        super().__init__()
        from transformers.activations import ACT2FN

        self.gated = cfg.arch == "llama"
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff * (2 if self.gated else 1), bias=cfg.mlp_bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)
        self.act = ACT2FN[cfg.act]

    def forward(self, x):
        h = self.fc(x)
        if self.gated:
            g, u = h.chunk(2, dim=-1)
            return self.proj(self.act(g) * u)
        return self.proj(self.act(h))


class Block(nn.Module):
    def __init__(self, cfg: FastConfig, layer: int):
        super().__init__()
        self.norm1, self.attn = _norm(cfg), Attention(cfg, layer)
        self.norm2, self.mlp = _norm(cfg), MLP(cfg)

    def forward(self, x, rows, write_idx, mask, rope, K, last=None, slots=None):
        """x: (B, S, d) -> (B, S, d); with ``last`` (B, 1): -> (B, 1, d) at that position only."""
        y = self.attn(self.norm1(x), rows, write_idx, mask, rope, K, last, slots)
        x = (x if last is None else x[rows, last]) + y
        return x + self.mlp(self.norm2(x))


class FastTransformer(nn.Module):
    """Inference-only copy of a ListenerLM's backbone + LR head. State (non-persistent buffers from
    :meth:`setup_caches`): each layer's KV caches, ``pos (B,)`` tokens held, ``codes (B,)`` latest
    LR code and ``logits (B, n_lr)`` per stream, rotary tables ``rope_cos, rope_sin (L, D)``."""

    def __init__(self, cfg: FastConfig, vocab_size: int, lr_offset: int):
        super().__init__()
        self.cfg, self.lr_offset = cfg, lr_offset
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.n_positions, cfg.d_model) if cfg.arch == "gpt2" else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = _norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.n_lr)
        self.max_seq = 0
        self.rope = None   # LLaMA: n -> (cos, sin) (n, D) fp32 tables from HF's own rotary module
        for name in ("pos", "codes", "logits", "rope_cos", "rope_sin"):
            self.register_buffer(name, None, persistent=False)

    @classmethod
    @torch.no_grad()
    def from_lm(cls, lm, dtype: torch.dtype | None = None, device=None) -> "FastTransformer":
        """Copy the weights of ``lm.backbone`` (GPT-2 or LLaMA family) and ``lm.lr_head``: a snapshot,
        rebuild it after further training (LoRA adapters are merged). ``dtype``/``device`` default to the LM's."""
        bb = lm.merged_backbone()
        c = bb.config
        arch = c.model_type
        if arch not in FAST_ARCHS:
            raise ValueError(f"backbone: expected model_type in {FAST_ARCHS} for the fast path, got {arch!r} "
                             "(use HFDecoder)")
        p = next(bb.parameters())
        base = bb.base_model
        emb = bb.get_input_embeddings().weight
        new = partial(cls, vocab_size=emb.shape[0], lr_offset=lm.vocab.lr_offset)
        n_lr = lm.lr_head.out_features
        # pairs (ours, HF's): a module is copied whole, a list of Linears concatenated
        if arch == "gpt2":
            H = c.n_head
            scale = [(c.n_embd // H) ** -0.5 if c.scale_attn_weights else 1.0] * c.n_layer
            if c.scale_attn_by_inverse_layer_idx:
                scale = [s / (i + 1) for i, s in enumerate(scale)]
            m = new(FastConfig("gpt2", c.n_layer, H, H, c.n_embd // H, c.n_embd, c.n_inner or 4 * c.n_embd, n_lr,
                               c.layer_norm_epsilon, c.activation_function, tuple(scale), True, True, c.n_positions))
            m.pos_emb.weight.copy_(base.wpe.weight)
            pairs = [(m.norm_f, base.ln_f)]
            for blk, h in zip(m.blocks, base.h):
                pairs += [(blk.norm1, h.ln_1), (blk.norm2, h.ln_2), (blk.attn.wqkv, [h.attn.c_attn]),
                          (blk.attn.wo, [h.attn.c_proj]), (blk.mlp.fc, [h.mlp.c_fc]), (blk.mlp.proj, [h.mlp.c_proj])]
        else:
            H, KV = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
            hd = getattr(c, "head_dim", None) or c.hidden_size // H
            a = base.layers[0]
            m = new(FastConfig("llama", c.num_hidden_layers, H, KV, hd, c.hidden_size, c.intermediate_size, n_lr,
                               c.rms_norm_eps, c.hidden_act, (hd ** -0.5,) * c.num_hidden_layers,
                               a.self_attn.q_proj.bias is not None, a.mlp.gate_proj.bias is not None,
                               c.max_position_embeddings))
            pairs = [(m.norm_f, base.norm)]
            for blk, h in zip(m.blocks, base.layers):
                at, mlp = h.self_attn, h.mlp
                pairs += [(blk.norm1, h.input_layernorm), (blk.norm2, h.post_attention_layernorm),
                          (blk.attn.wqkv, [at.q_proj, at.k_proj, at.v_proj]), (blk.attn.wo, [at.o_proj]),
                          (blk.mlp.fc, [mlp.gate_proj, mlp.up_proj]), (blk.mlp.proj, [mlp.down_proj])]
            m.rope = partial(_hf_rope, base.rotary_emb)   # a plain callable: .to(dtype) leaves HF's fp32 module alone
        m.tok_emb.weight.copy_(emb)
        for dst, src in pairs + [(m.head, lm.lr_head)]:
            if isinstance(src, nn.Module):
                dst.load_state_dict(src.state_dict())
                continue
            # HF's GPT-2 Conv1D stores (in, out): transpose to Linear's (out, in)
            dst.weight.copy_(torch.cat([s.weight.t() if arch == "gpt2" else s.weight for s in src]))
            if dst.bias is not None:
                dst.bias.copy_(torch.cat([s.bias for s in src]))
        m.requires_grad_(False)
        return m.to(device=device or p.device, dtype=dtype or p.dtype).eval()

    @torch.no_grad()
    def setup_caches(self, max_batch: int, max_seq: int) -> None:
        """Allocate the KV caches and per-stream state once: ``(max_batch, n_kv, max_seq + 1, D)``."""
        c = self.cfg
        if not 1 <= max_seq <= c.n_positions:
            raise ValueError(f"max_seq: expected 1..{c.n_positions} (the backbone's context), got {max_seq}")
        p = self.tok_emb.weight
        self.max_seq = max_seq
        shape = (max_batch, c.n_kv_head, max_seq + 1, c.head_dim)
        for b in self.blocks:
            b.attn.k_cache, b.attn.v_cache = (torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(2))
        self.pos = torch.zeros(max_batch, dtype=torch.long, device=p.device)
        self.codes = torch.zeros(max_batch, dtype=torch.long, device=p.device)
        self.logits = torch.zeros(max_batch, c.n_lr, dtype=torch.float32, device=p.device)
        if c.arch == "llama":   # tables from HF's own module, on its device, in fp32, then cast like HF
            self.rope_cos, self.rope_sin = (t.to(p.device, p.dtype) for t in self.rope(max_seq))   # (L, D)
        for t in self.state_tensors():
            torch._dynamo.mark_static_address(t)

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor of decoding state (for memory accounting and CUDA-graph static addresses)."""
        caches = [t for b in self.blocks for t in (b.attn.k_cache, b.attn.v_cache)]
        return [t for t in caches + [self.pos, self.codes, self.logits, self.rope_cos, self.rope_sin] if t is not None]

    def forward(self, inp: torch.Tensor, key_pos: torch.Tensor, slots: torch.Tensor | None = None) -> None:
        """One right-padded block; updates caches, ``pos``, ``codes``, ``logits``. inp: (B, S + 3) int64 = ``[tokens
        | n_valid | lead (token 0 := lr(codes)) | emit (codes := argmax at the last valid token)]``; key_pos: (K,)
        ``arange(K)``, the key window; slots: (B,) the cache rows of inp's rows (None: 0..B-1)."""
        B, S, K = inp.shape[0], inp.shape[1] - 3, key_pos.shape[0]
        L = self.max_seq
        tokens, n_valid = inp[:, :-3], inp[:, -3]      # negative indices: S stays a dynamic size
        lead, emit = inp[:, -2].bool(), inp[:, -1].bool()
        ar = torch.arange(S, device=inp.device)
        sel = slice(B) if slots is None else slots
        codes, pos = self.codes[sel], self.pos[sel]
        tokens = torch.where(lead[:, None] & (ar == 0), codes[:, None] + self.lr_offset, tokens)
        positions = pos[:, None] + ar                                         # (B, S)
        write_idx = torch.where(ar < n_valid[:, None], positions, L)          # padding -> trash slot L
        x = self.tok_emb(tokens)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)                 # additive mask, (B, 1, S, K)
        mask = torch.where(key_pos <= positions[:, :, None], zero, float("-inf"))[:, None]
        rows = torch.arange(B, device=inp.device)[:, None]
        pclip = positions.clamp(max=L - 1)
        if self.pos_emb is not None:   # GPT-2: learned positions; LLaMA: rotary (B, 1, S, D)
            x = x + self.pos_emb(pclip)
        rope = None if self.rope_cos is None else (self.rope_cos[pclip][:, None], self.rope_sin[pclip][:, None])
        last = (n_valid - 1).clamp(min=0)[:, None]                            # (B, 1)
        for blk in self.blocks[:-1]:
            x = blk(x, rows, write_idx, mask, rope, K, None, slots)
        x = self.blocks[-1](x, rows, write_idx, mask, rope, K, last, slots)   # (B, 1, d): the last layer
        logits = self.head(self.norm_f(x[:, 0])).float()                      # only needs one position
        self.codes[sel] = torch.where(emit, logits.argmax(-1), codes)
        self.logits[sel] = torch.where(emit[:, None], logits, self.logits[sel])
        self.pos[sel] = pos + n_valid


def _hf_rope(rotary: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``(n, D)`` of positions ``0..n-1`` from HF's rotary module (any rope type), in fp32 on its device."""
    dev = next(rotary.buffers()).device
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32, device=dev), torch.arange(n, device=dev)[None])
    return cos[0], sin[0]


def _check_ids(name: str, ids, vocab_size: int) -> list[int]:
    ids = [int(t) for t in ids]
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{name}: expected token ids in [0, {vocab_size}), got {bad[0]}")
    return ids


def _prepare(lm, history, steps, batch: int, max_len: int):
    """Checked copies ``(history, steps, plans, n_steps)``; ``plans[b][i]``: start step of step i's context."""
    if len(history) != len(steps):
        raise ValueError(f"steps: expected one list of steps per stream ({len(history)} histories), got {len(steps)}")
    if not 1 <= len(history) <= batch:
        raise ValueError(f"history: expected 1..{batch} streams (allocated), got {len(history)}")
    n = {len(s) for s in steps}
    if len(n) != 1 or 0 in n:
        raise ValueError(f"steps: expected the same number (>= 1) of steps for every stream, got {sorted(n)}")
    history = [list(h) for h in history]
    steps = [[list(x) for x in s] for s in steps]
    plans = [lm.context_plan(h, s, with_lr=True, max_len=max_len) for h, s in zip(history, steps)]
    return history, steps, plans, n.pop()


class _Decoder:
    """The one decoding loop, shared by :class:`Generator` and :class:`HFDecoder` (they differ in ``advance``
    and in which streams a step re-prefills, :meth:`_restarts`); ``gens[b]``: stream b's sampling generator."""

    def _setup(self, lm, batch: int, max_len: int | None, sampling: Sampling | None) -> None:
        if isinstance(batch, bool) or not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0):
            raise ValueError(f"max_len: expected None or an int >= 0 (0: the LM's), got {max_len!r}")
        self.lm, self.batch, self.sampling = lm, batch, sampling or Sampling()
        self.max_len = int(max_len or lm.max_len)
        self.vocab_size = lm.vocab.size
        self.gens = _rngs(None, batch, self.device)

    def seed(self, streams: Sequence[int], seeds: Sequence[int] | None = None) -> None:
        """Seed the sampling generator of each of ``streams`` (default seed 0)."""
        for b, g in zip(streams, _rngs(seeds, len(streams), self.device)):
            self.gens[b] = g

    def _restarts(self, i: int, plans: list[list[int]], steps) -> list[int]:
        """Streams whose context is (re)built at step ``i``: the first step and context jumps."""
        return [b for b in range(len(steps)) if i == 0 or plans[b][i] != plans[b][i - 1]]

    @torch.no_grad()
    def generate(self, history: Sequence[Sequence[int]], steps: Sequence[Sequence[Sequence[int]]],
                 seeds: Sequence[int] | None = None) -> torch.Tensor:
        """LR codes ``(B, n_steps)`` from ``history[b]`` and ``steps[b][i]`` (``ListenerLM.speaker_steps``), row b
        sampled with ``seeds[b]`` (default 0); equal to :func:`generate_nocache`; host syncs only at context jumps."""
        history, steps, plans, n = _prepare(self.lm, history, steps, self.batch, self.max_len)
        self.seed(range(len(history)), seeds)
        out = torch.empty(len(history), n, dtype=torch.long, device=self.device)
        for i in range(n):
            jumps = self._restarts(i, plans, steps)
            codes = out[:, :i].tolist() if (jumps and i) else None       # host sync only at context jumps
            pre = {b: self.lm.context_ids(history[b], steps[b], codes[b] if codes else [], i, plans[b][i])
                   for b in jumps}
            self.advance(prefill=pre, step={b: steps[b][i] for b in range(len(steps)) if b not in pre})
            out[:, i] = self.codes[:len(history)]
        return out

    def generate_segments(self, segments, n_steps: int | None = None, seeds: Sequence[int] | None = None) -> list:
        """LR codes ``(n_steps,)`` int64 numpy per Segment (default ``T // r`` steps; segment k sampled with
        ``seeds[k]``), decoding ``batch`` segments at a time (grouped by step count)."""
        todo = [self.lm.speaker_steps(seg, n_steps) for seg in segments]
        seeds = [0] * len(todo) if seeds is None else list(seeds)
        out = [np.zeros(0, np.int64) for _ in todo]
        for part in length_batches([len(st) for _, st in todo], self.batch):
            if len(todo[part[0]][1]):
                codes = self.generate([todo[k][0] for k in part], [todo[k][1] for k in part],
                                      [seeds[k] for k in part]).cpu().numpy()
                for k, c in zip(part, codes):
                    out[k] = c
        return out


class Generator(_Decoder):
    """Fast decoding of up to ``batch`` streams (:class:`FastTransformer`); ``compile``: True (CUDA graphs on CUDA)
    or "max-autotune"; ``buckets`` (CUDA: ``BUCKETS``): padded block widths; ``chunk``: prefill block. ``codes``
    (batch,) int64: each stream's latest LR code; ``logits`` (batch, n_lr) fp32: the LR-head logits behind it."""

    def __init__(self, lm, batch: int = 1, max_len: int | None = None, dtype: torch.dtype | None = None,
                 device=None, compile: bool | str = False, buckets: Sequence[int] | None | str = "auto",
                 chunk: int = 64, sampling: Sampling | None = None):
        if not all(hasattr(lm, a) for a in ("vocab", "backbone", "config")):
            raise ValueError(f"lm: expected a ListenerLM (with .vocab, .backbone, .config), got {type(lm).__name__}; "
                             f"for live input use StreamingListener(lm, vq, beta)")
        if compile not in (False, True, "max-autotune"):
            raise ValueError(f"compile: expected False, True or 'max-autotune', got {compile!r}")
        self.model = FastTransformer.from_lm(lm, dtype=dtype, device=device)
        self.device = self.model.tok_emb.weight.device
        self._setup(lm, batch, max_len, sampling)
        cuda = self.device.type == "cuda"
        self.model.setup_caches(batch, self.max_len)
        self.codes, self.logits = self.model.codes, self.model.logits
        if buckets == "auto":
            buckets = BUCKETS if cuda else None
        self.buckets = tuple(sorted({int(b) for b in buckets} | {chunk})) if buckets else None
        self.chunk, self.kv_block = chunk, 128 if cuda else 32    # kv_block: granularity of the key window
        self.key_pos = torch.arange(self.max_len, device=self.device)
        self.host_pos = [0] * batch           # mirror of model.pos, known without a device sync
        self._fwd, self._pin, self.compiled = self.model.forward, cuda, bool(compile)
        if compile:   # on CUDA both modes record CUDA graphs
            auto = compile == "max-autotune"
            kw = {"mode": compile if auto else "reduce-overhead"} if cuda else {"options": {"max_autotune": auto}}
            self._fwd = torch.compile(self.model.forward, fullgraph=True, **kw)

    def reset(self, streams: Sequence[int] | None = None, seeds: Sequence[int] | None = None) -> None:
        """Forget the context of ``streams`` (default all) and seed their sampling (``seeds``, default 0); the
        cache memory stays allocated."""
        streams = list(range(self.batch) if streams is None else streams)
        for b in streams:
            self._check_stream(b)
        self.seed(streams, seeds)
        self._clear(streams)

    def _clear(self, streams: list[int]) -> None:
        for b in streams:
            self.host_pos[b] = 0
        idx = torch.as_tensor(streams, dtype=torch.long, device=self.device)
        self.model.pos.index_fill_(0, idx, 0)
        self.model.codes.index_fill_(0, idx, 0)

    def state_bytes(self) -> int:
        """Bytes of all decoding state on the device (fixed at construction)."""
        return sum(t.numel() * t.element_size() for t in self.model.state_tensors())

    def _check_stream(self, b) -> None:
        if not (isinstance(b, int) and 0 <= b < self.batch):
            raise ValueError(f"stream: expected an index in [0, {self.batch}) (streams allocated), got {b!r}")

    @torch.no_grad()
    def advance(self, prefill: Mapping[int, Sequence[int]] | None = None,
                step: Mapping[int, Sequence[int]] | None = None) -> None:
        """Shared forwards: ``prefill[b]`` restarts stream b's context (its sampling generator goes on) with a whole
        context; ``step[b]`` feeds ``[lr(codes[b])] + tokens``; then ``codes[b]`` is the next LR code (picked as
        ``sampling`` says). All is checked first: an error leaves the state usable."""
        prefill, step = dict(prefill or {}), dict(step or {})
        rows: dict[int, list[int]] = {}    # per stream, the pending tokens; -1 = LR token put in on the device
        for b, ids in prefill.items():
            self._check_stream(b)
            rows[b] = _check_ids(f"prefill[{b}]", ids, self.vocab_size)
            if not rows[b]:
                raise ValueError(f"prefill[{b}]: expected at least 1 token, got 0")
        for b, ids in step.items():
            self._check_stream(b)
            if b in rows:
                raise ValueError(f"step: stream {b} is also in prefill")
            if self.host_pos[b] == 0:
                raise ValueError(f"step[{b}]: stream {b} has no context yet: prefill it first")
            rows[b] = [-1] + _check_ids(f"step[{b}]", ids, self.vocab_size)
        pos = {b: 0 if b in prefill else self.host_pos[b] for b in rows}
        for b, r in rows.items():
            if pos[b] + len(r) > self.max_len:
                raise ContextFullError(f"stream {b}: expected at most max_len={self.max_len} tokens in context, "
                                       f"got {pos[b] + len(r)} ({pos[b]} held + {len(r)} new): slide the window")
        if prefill:
            self._clear(list(prefill))
        while rows:
            n = max(min(len(r), self.chunk) for r in rows.values())
            S = next(s for s in self.buckets if s >= n) if self.buckets else n
            real = sorted(rows)               # only the streams with tokens: idle slots cost nothing
            busy = list(real)
            if self.buckets:                  # CUDA: widths in powers of two (idle rows pad them), so few CUDA graphs
                width = min(self.batch, 1 << (len(real) - 1).bit_length())
                busy += [b for b in range(self.batch) if b not in rows][:width - len(real)]
            inp = [[0] * (S + 3) for _ in busy]
            done = []
            for row, b in zip(inp, real):
                part, rest = rows[b][:self.chunk], rows[b][self.chunk:]
                row[:len(part)] = part
                row[S:] = [len(part), int(part[0] == -1), int(not rest)]   # -1: only a step's first token
                pos[b] += len(part)
                if rest:
                    rows[b] = rest
                else:
                    del rows[b]
                    done.append(b)
            K = min(self.max_len, -(-max(pos.values()) // self.kv_block) * self.kv_block)
            t = torch.tensor(inp, dtype=torch.long).clamp_(min=0)
            t = (t.pin_memory() if self._pin else t).to(self.device, non_blocking=True)
            key_pos = self.key_pos[:K]
            slots = None if busy == list(range(self.batch)) else torch.tensor(busy, device=self.device)
            if self.compiled:
                torch._dynamo.mark_dynamic(t, 1)
                torch._dynamo.mark_dynamic(key_pos, 0)
                torch._dynamo.maybe_mark_dynamic(t, 0)
            self._fwd(t, key_pos, slots)
            if done and not self.sampling.greedy:      # the forward emitted argmax: draw instead, outside the graph
                idx = torch.tensor(done, dtype=torch.long, device=self.device)
                self.codes[idx] = pick(self.logits[idx], self.sampling, [self.gens[b] for b in done])
        for b, p in pos.items():
            self.host_pos[b] = p


class HFDecoder(_Decoder):
    """Any HF causal LM with its ``DynamicCache`` (benchmark baseline (b)) or ``StaticCache``, eager; streams
    advance in lock step (right-padded blocks, 2-D mask, per-stream positions); a prefill restarts all."""

    def __init__(self, lm, batch: int = 1, cache: str = "dynamic", max_len: int | None = None,
                 sampling: Sampling | None = None):
        if cache not in ("dynamic", "static"):
            raise ValueError(f"cache: expected 'dynamic' or 'static', got {cache!r}")
        self.kind, self.base = cache, lm._decoder()
        self.device = next(lm.backbone.parameters()).device
        self._setup(lm, batch, max_len, sampling)
        self.codes = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(batch, lm.lr_head.out_features, device=self.device)
        self.cache = None

    @torch.no_grad()
    def advance(self, prefill: Mapping[int, Sequence[int]] | None = None,
                step: Mapping[int, Sequence[int]] | None = None) -> None:
        """As :meth:`Generator.advance`, in lock step: either ``prefill`` or ``step`` names streams ``0..B-1``."""
        prefill, step = dict(prefill or {}), dict(step or {})
        if prefill and step:   # a jump of some streams: restart all (the others' contexts are rebuilt by generate)
            raise ValueError("HFDecoder.advance: streams advance in lock step; prefill all or step all")
        rows, lead = (prefill, 0) if prefill else (step, 1)
        B = len(rows)
        held = self.batch if prefill else 0 if self.cache is None else self.pos.shape[0]
        if not rows:
            return
        if sorted(rows) != list(range(B)) or B > held or (lead and B != held):
            name = "step" if lead else "prefill"
            raise ValueError(f"{name}: expected streams 0..B-1 ({'every prefilled stream' if lead else 'B <= batch'}"
                             f" of {held}), got {sorted(rows)}")
        if prefill:
            from transformers import DynamicCache, StaticCache

            self.timeline = self.max_len + 64 * 2
            cfg = self.lm.backbone.config
            self.cache = StaticCache(config=cfg, max_cache_len=self.timeline) if self.kind == "static" else \
                DynamicCache(config=cfg)
            self.mask = torch.zeros(B, self.timeline, dtype=torch.long, device=self.device)
            self.pos = torch.zeros(B, dtype=torch.long, device=self.device)
            self.t = 0
        lens = [len(rows[b]) + lead for b in range(B)]
        S = max(lens)
        if self.t + S > self.timeline:   # padding used up the timeline: restart with whole contexts
            raise ContextFullError(f"HFDecoder: expected at most {self.timeline} padded positions, got {self.t + S}")
        ids = torch.tensor([[0] * lead + _check_ids(f"step[{b}]", rows[b], self.vocab_size) + [0] * (S - lens[b])
                            for b in range(B)], dtype=torch.long).to(self.device)
        if lead:
            ids[:, 0] = self.codes[:B] + self.lm.vocab.lr_offset
        n = torch.tensor(lens, device=self.device)
        ar = torch.arange(S, device=self.device)
        self.mask[:B, self.t:self.t + S] = (ar < n[:, None]).long()
        pos = (self.pos[:B, None] + ar).clamp(max=self.max_len - 1)
        out = self.base(input_ids=ids, attention_mask=self.mask[:B, :self.t + S], position_ids=pos,
                        use_cache=True, cache=self.cache)
        h = out.last_hidden_state[torch.arange(B, device=self.device), n - 1]
        self.logits[:B] = self.lm.lr_head(h).float()
        self.codes[:B] = pick(self.logits[:B], self.sampling, self.gens[:B])
        self.pos[:B] += n
        self.t += S

    def _restarts(self, i: int, plans: list[list[int]], steps) -> list[int]:
        """Lock step: all streams re-prefill where any context jumps or the padded timeline would overflow."""
        jump = (i == 0 or any(p[i] != p[i - 1] for p in plans)
                or self.t + max(len(s[i]) for s in steps) + 1 > self.timeline)
        return list(range(len(steps))) if jump else []


@torch.no_grad()
def generate_nocache(lm, history, steps, max_len: int | None = None, sampling: Sampling | None = None,
                     seeds: Sequence[int] | None = None) -> torch.Tensor:
    """The reference (LM-listener's way, benchmark baseline (a)): every LR token recomputes its whole
    context (``lm.context_ids`` / ``context_plan``) with the HF model, no cache -> codes ``(B, n_steps)``;
    row b sampled with ``seeds[b]`` (default 0)."""
    history, steps, plans, n = _prepare(lm, history, steps, len(history), max_len or lm.max_len)
    device = lm.lr_head.weight.device
    gens = _rngs(seeds, len(history), device)
    codes: list[list[int]] = [[] for _ in history]
    was = lm.training
    lm.eval()
    try:
        for i in range(n):
            seqs = [lm.context_ids(h, s, c, i, p[i]) for h, s, c, p in zip(history, steps, codes, plans)]
            lens = torch.tensor([len(s) for s in seqs], device=device)
            ids = pad_sequence([torch.tensor(s, dtype=torch.long) for s in seqs], batch_first=True).to(device)
            mask = (torch.arange(ids.shape[1], device=device) < lens[:, None]).long()
            logits = lm.lr_logits(ids, attention_mask=None if mask.all() else mask)   # unpadded: no mask
            new = pick(logits[torch.arange(len(seqs), device=device), lens - 1], sampling, gens).tolist()
            for c, x in zip(codes, new):
                c.append(x)
    finally:
        lm.train(was)
    return torch.tensor(codes, dtype=torch.long, device=device)


@torch.no_grad()
def decode_codes(vq, codes: list[np.ndarray], clips, batch: int = 64) -> list[np.ndarray]:
    """LR codes ``(L,)`` per clip -> raw motion ``(T, 56)`` with the clip's listener beta."""
    out: list = [None] * len(clips)
    order = sorted(range(len(clips)), key=lambda i: len(codes[i]))
    dev = vq.codebook.device
    for s in range(0, len(order), batch):
        for _, group in itertools.groupby(order[s:s + batch], key=lambda i: len(codes[i])):
            ids = list(group)
            c = torch.as_tensor(np.stack([codes[i] for i in ids]), dtype=torch.long, device=dev)
            beta = (torch.as_tensor(np.stack([clips[i].listener_beta for i in ids]), device=dev)
                    if vq.needs_beta else None)
            for i, mi in zip(ids, vq.decode(c, beta).float().cpu().numpy()):
                out[i] = mi[:clips[i].T]
    return out


def generate_motion(lm, vq, clips, batch: int = 16, sampling: Sampling | None = None, samples: int = 1,
                    seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(codes, motion)`` per clip from the fast decoder: ``(n,)`` and ``(T, 56)``; with ``samples`` K > 1, K
    reactions per clip decoded as one batch: ``(K, n)`` and ``(K, T, 56)``; sample s of clip i draws from its own
    generator, seeded from ``(seed, i, s)``, whatever K is."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"samples: expected an int >= 1, got {samples!r}")
    if samples > 1 and (sampling is None or sampling.greedy):
        raise UserError(f"samples: expected 1 with greedy decoding (they would be {samples} copies), got {samples}")
    gen = Generator(lm, batch=min(batch, len(clips)) * samples, sampling=sampling)
    rows = [c for c in clips for _ in range(samples)]
    seeds = [int(np.random.SeedSequence([seed, i, s]).generate_state(1, np.uint64)[0] >> 1)
             for i in range(len(clips)) for s in range(samples)]
    codes = gen.generate_segments(rows, seeds=seeds)
    motion = decode_codes(vq, codes, rows)
    if samples == 1:
        return codes, motion
    return tuple([np.stack(x[k:k + samples]) for k in range(0, len(x), samples)] for x in (codes, motion))
