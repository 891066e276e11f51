"""Identity-disentangled VQ-VAE: the tokenizer of listener responses (paper §3.2, supplement §2).

    motion (B, T, 56) --norm--> Encoder --z (B, L, d_c)--> Codebook --LR codes (B, L)--> z_q
    z_q + beta (B, 100) --> Decoder --de-norm--> motion (B, T, 56),          L = T / r, r = 8

Encoder: Conv1D in -> n_down x [ResBlock(enc_norm) + Conv1D stride 2] -> Conv1D to d_c.
Decoder: Conv1D in -> n_down x [ResBlock(dec_norm, beta) + nearest x2 + Conv1D] -> Conv1D out.
A ResBlock is pre-activation (T2M-GPT): ``x + conv1x1(act(norm(conv3(act(norm(x))))))``.

Norm variants (paper Table 5): encoder ``none | in | ln``; decoder ``none | in | ln | adain | adaln``.
``in`` = instance norm over time per channel (learned affine), ``ln`` = layer norm over channels
per frame (learned affine); ``adain`` / ``adaln`` take the affine ``(1 + scale, shift)`` from the
listener's shape beta: beta -> small MLP (shared) -> one zero-initialised linear head per norm
layer, so an untrained AdaIN model starts as plain IN. IN/AdaIN + ReLU run through
``minilisten.kernels.norm_act`` (Triton on GPU); LN/AdaLN use torch ops.

Presets: ``naive`` = (none, none) as LM-listener; ``disentangled`` = (in, adain), the paper's.

Motion normalisation (both presets): the dataset mean/std (56,) are buffers (``motion_mean``,
``motion_std``, set by :meth:`VQVAE.set_motion_stats` before training); inputs are mapped to
``(x - mean) / std`` and the decoder's output is mapped back, so ``decode`` returns RAW coefficients.
For the naive model this is LM-listener's normalisation. For the disentangled model it is only a
fixed per-coefficient change of units, the same for every clip: it puts expression (~1) and pose
(~0.1 rad) on one scale for the losses and removes nothing identity-specific. What removes
per-clip / per-identity statistics are the IN layers inside the encoder's ResBlocks, and what puts
them back is AdaIN(beta) in the decoder. (IN sits inside the residual branches, as in the paper's
text, so the skip path can still carry a clip's absolute level: content that beta cannot predict,
e.g. a clip-long smile, stays reconstructible from the codes.) Both presets therefore compute the
training losses in the same normalised units and Table 5 compares the norm layers only.

Quantizer (``Codebook``): nearest code by squared L2 (Eq. 5) through ``minilisten.kernels.quantize``,
straight-through gradient, EMA update (decay 0.99) of ``cluster_size`` / ``embed_avg``, codebook
initialised from the first training batch (rows tiled with small noise when the batch has fewer
than K latents), and dead-code reset: a code whose EMA count falls below ``dead_threshold`` (1.0 as
LM-listener) is replaced by a random encoder output of the current batch. One deliberate deviation
from LM-listener/T2M-GPT: a reset code also gets fresh EMA statistics (count = threshold, sum =
row * threshold, as lucidrains' ``expire_codes_``), so a revived code that then gets used
stabilises at once instead of being re-randomised until its stale count recovers. All VQ math is
fp32. State lives in registered buffers (``initted``, ``cluster_size``, ``embed_avg``, ``embed``)
and survives ``state_dict`` / checkpoints / ``--resume``.
Under ``torchrun`` (several processes) the EMA statistics are all-reduced and rank 0 (seeing the
global batch's latents) initialises the codebook and decides the resets, then broadcasts it, so
every rank holds the same codebook (``Codebook.update``, plain torch.distributed collectives).

Losses (supplement Eq. 2-6), means instead of the paper's sums (independent of T and B):
    L = w_embed * |z - sg[z_q]|^2 + w_commit * |sg[z] - z_q|^2 + smoothL1(x^, x) + w_veloc * smoothL1(dx^, dx)
with w_embed = 1, w_commit = 0.02, w_veloc = 0.5 (paper), in normalised units. With an EMA
codebook ``z_q`` is a buffer, so the commit term is reported but carries no gradient; the encoder
is pulled to its code by the embed term with weight 1. (T2M-GPT and LM-listener put 0.02 on that
encoder-side term instead; set ``w_embed=0.02`` for their behaviour.)

Padding rule: T must be a positive multiple of r = 8 (crop first: ``T - T % 8``); anything else
raises ``ValueError`` — nothing is padded or truncated silently.

Streaming: the convolutions are non-causal, so a decoded frame depends on ``receptive_field``
codes on each side. With an IN/AdaIN-free decoder (``dec_norm`` none/ln/adaln), decoding a
window with ``receptive_field`` codes of context on each side (or the sequence end) gives the
window's frames exactly (``StreamingListener`` decodes so). An ``in``/``adain`` decoder normalises over the whole
decoded window, so incremental decoding is an approximation whose error shrinks with the window.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_model, save_checkpoint
from .data.segment import D_MOTION, N_SHAPE

# kernels/ is installed as the subpackage minilisten.kernels (setup.py; a top-level ``kernels``
# would be an unrelated PyPI project): run from an install, e.g. ``pip install -e .``
from .kernels import code_stats, norm_act, quantize

FORMAT = "minilisten.VQVAE"                      # config.json tag (minilisten.checkpoint.check_format)
OLD_TAG = {"model_type": "minilisten.vqvae"}     # the tag of checkpoints written before
ENC_NORMS = ("none", "in", "ln")
DEC_NORMS = ("none", "in", "ln", "adain", "adaln")
PRESETS = {
    "naive": dict(enc_norm="none", dec_norm="none"),
    "disentangled": dict(enc_norm="in", dec_norm="adain"),
}


@dataclass
class VQConfig:
    d_motion: int = D_MOTION      # 56 = 50 expression + 6 pose
    n_shape: int = N_SHAPE        # beta (100,)
    width: int = 512              # hidden channels of encoder and decoder (paper 512)
    codebook_size: int = 256      # K = |V_LR|
    code_dim: int = 512           # d_c
    n_down: int = 3               # stride-2 stages; r = 2 ** n_down = 8
    res_depth: int = 1            # ResBlocks per stage (paper: one per stage, L = 3 in all)
    dilation_growth: int = 3      # dilation of the i-th ResBlock of a stage = growth ** i
    enc_norm: str = "in"          # none | in | ln
    dec_norm: str = "adain"       # none | in | ln | adain | adaln
    id_hidden: int = 128          # width of the beta MLP feeding AdaIN/AdaLN
    decay: float = 0.99           # EMA decay of the codebook
    dead_threshold: float = 1.0   # EMA count below which a code is reset
    w_embed: float = 1.0          # |z - sg[z_q]|^2           (Eq. 2)
    w_commit: float = 0.02        # |sg[z] - z_q|^2           (Eq. 3, lambda_commit)
    w_veloc: float = 0.5          # smooth L1 on frame deltas (Eq. 5, lambda_veloc)
    eps: float = 1e-5             # norm epsilon
    fps: float = 30.0             # frame rate of the motion it was trained on (train-vq sets it from the data)

    def __post_init__(self):
        if self.enc_norm not in ENC_NORMS:
            raise ValueError(f"VQConfig.enc_norm: expected one of {ENC_NORMS}, got {self.enc_norm!r}")
        if self.dec_norm not in DEC_NORMS:
            raise ValueError(f"VQConfig.dec_norm: expected one of {DEC_NORMS}, got {self.dec_norm!r}")
        for f in ("d_motion", "n_shape", "width", "codebook_size", "code_dim", "n_down", "res_depth",
                  "dilation_growth", "id_hidden"):
            v = getattr(self, f)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"VQConfig.{f}: expected a positive int, got {v!r}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"VQConfig.decay: expected 0 <= decay < 1, got {self.decay!r}")
        for f in ("w_embed", "w_commit", "w_veloc", "dead_threshold", "eps", "fps"):   # NaN fails every comparison
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 if f in ("eps", "fps") else v >= 0) \
                    or v == float("inf"):
                raise ValueError(f"VQConfig.{f}: expected a finite number {'> 0' if f in ('eps', 'fps') else '>= 0'}, got {v!r}")

    @property
    def rate(self) -> int:
        """r: frames per LR code."""
        return 2 ** self.n_down

    @property
    def needs_beta(self) -> bool:
        return self.dec_norm in ("adain", "adaln")


# ----------------------------------------------------------------------------- building blocks
class NormAct(nn.Module):
    """norm (none | in | ln | adain | adaln) + affine ``(1 + scale) * x_hat + shift`` + ReLU.
    x: (B, C, T); ident: (B, id_hidden) identity embedding, used by the adaptive kinds only."""

    def __init__(self, kind: str, channels: int, id_hidden: int, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps
        if kind in ("in", "ln"):
            self.scale = nn.Parameter(torch.zeros(channels))
            self.shift = nn.Parameter(torch.zeros(channels))
        elif kind in ("adain", "adaln"):
            self.to_affine = nn.Linear(id_hidden, 2 * channels)  # beta embedding -> (scale, shift)
            nn.init.zeros_(self.to_affine.weight)
            nn.init.zeros_(self.to_affine.bias)

    def affine(self, ident):
        if self.kind in ("adain", "adaln"):
            return self.to_affine(ident).chunk(2, dim=-1)  # 2 x (B, C)
        return self.scale, self.shift  # 2 x (C,)

    def forward(self, x: torch.Tensor, ident: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "none":
            return F.relu(x)
        scale, shift = self.affine(ident)
        if self.kind in ("in", "adain"):  # instance norm over T: the fused kernel
            return norm_act(x, scale, shift, relu=True, eps=self.eps)
        xh = F.layer_norm(x.transpose(1, 2), (x.shape[1],), eps=self.eps).transpose(1, 2)  # over C per frame
        if scale.dim() == 2:
            scale, shift = scale[:, :, None], shift[:, :, None]
        else:
            scale, shift = scale[None, :, None], shift[None, :, None]
        return F.relu((1 + scale) * xh + shift)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv1x1(na2(conv3_dil(na1(x))))``. x: (B, C, T)."""

    def __init__(self, channels: int, norm: str, dilation: int, id_hidden: int, eps: float):
        super().__init__()
        self.dilation = dilation
        self.na1 = NormAct(norm, channels, id_hidden, eps)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.na2 = NormAct(norm, channels, id_hidden, eps)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x, ident=None):
        return x + self.conv2(self.na2(self.conv1(self.na1(x, ident)), ident))


class Encoder(nn.Module):
    """motion (B, 56, T) normalised -> z (B, d_c, T / r). No identity input."""

    def __init__(self, c: VQConfig):
        super().__init__()
        self.conv_in = nn.Conv1d(c.d_motion, c.width, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for _ in range(c.n_down):
            self.blocks.append(nn.ModuleList(
                ResBlock(c.width, c.enc_norm, c.dilation_growth ** i, c.id_hidden, c.eps) for i in range(c.res_depth)))
            self.downs.append(nn.Conv1d(c.width, c.width, 4, stride=2, padding=1))
        self.conv_out = nn.Conv1d(c.width, c.code_dim, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.conv_in(x))
        for blocks, down in zip(self.blocks, self.downs):
            for b in blocks:
                h = b(h)
            h = down(h)
        return self.conv_out(h)


class Decoder(nn.Module):
    """z_q (B, d_c, L) + beta (B, 100) -> motion (B, 56, L * r) in normalised units."""

    def __init__(self, c: VQConfig):
        super().__init__()
        self.c = c
        if c.needs_beta:  # shared beta trunk; each AdaIN/AdaLN layer has its own affine head
            self.id_mlp = nn.Sequential(nn.Linear(c.n_shape, c.id_hidden), nn.SiLU(), nn.Linear(c.id_hidden, c.id_hidden))
        self.conv_in = nn.Conv1d(c.code_dim, c.width, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for _ in range(c.n_down):
            self.blocks.append(nn.ModuleList(
                ResBlock(c.width, c.dec_norm, c.dilation_growth ** i, c.id_hidden, c.eps) for i in range(c.res_depth)))
            self.ups.append(nn.Conv1d(c.width, c.width, 3, padding=1))
        self.conv_post = nn.Conv1d(c.width, c.width, 3, padding=1)
        self.conv_out = nn.Conv1d(c.width, c.d_motion, 3, padding=1)

    def forward(self, zq, beta=None):
        ident = self.id_mlp(beta) if self.c.needs_beta else None  # (B, id_hidden)
        h = F.relu(self.conv_in(zq))
        for blocks, up in zip(self.blocks, self.ups):
            for b in blocks:
                h = b(h, ident)
            h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.relu(self.conv_post(h)))

    def receptive_radius(self) -> float:
        """How far (in codes) a decoded frame sees on each side through the convolutions."""
        c, r = self.c, 0.0
        r += 1.0  # conv_in, k=3 at code rate
        for s in range(c.n_down):
            res = 2 ** s  # samples per code at this stage
            r += sum(c.dilation_growth ** i for i in range(c.res_depth)) / res  # ResBlock k=3 dilated convs
            r += 1.0 / (2 * res)  # conv after nearest x2
        r += 2.0 / c.rate  # conv_post + conv_out at frame rate
        return r


def _world() -> int:
    """Processes of the default torch.distributed group (1 when it is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x (N_r, d)`` concatenated in rank order; ranks may hold different N_r."""
    n = torch.tensor([x.shape[0]], device=x.device)
    ns = [torch.zeros_like(n) for _ in range(_world())]
    dist.all_gather(ns, n)
    m = int(max(ns))
    pad = torch.cat([x, x.new_zeros(m - x.shape[0], x.shape[1])])
    outs = [torch.empty_like(pad) for _ in ns]
    dist.all_gather(outs, pad)
    return torch.cat([o[:int(k)] for o, k in zip(outs, ns)])


class Codebook(nn.Module):
    """EMA codebook with first-batch init and dead-code reset. z: (N, d) fp32 -> (idx (N,), z_q (N, d)).

    Updates happen in ``forward`` when ``self.training``. Under torch.distributed every rank's update
    sees the global batch: counts and sums are all-reduced, rank 0 initialises and resets from the
    gathered latents and broadcasts the buffers, as one process on the concatenated batch would."""

    def __init__(self, size: int, dim: int, decay: float = 0.99, dead_threshold: float = 1.0):
        super().__init__()
        self.size, self.dim, self.decay, self.dead_threshold = size, dim, decay, dead_threshold
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("cluster_size", torch.zeros(size))      # EMA of per-code counts (K,)
        self.register_buffer("embed_avg", torch.zeros(size, dim))    # EMA of per-code sums   (K, d)
        self.register_buffer("embed", torch.zeros(size, dim))        # the codebook           (K, d)

    @staticmethod
    def sample_rows(z: torch.Tensor, n: int) -> torch.Tensor:
        """n random rows of z (N, d); when N < n, z is tiled with noise of std 0.01 / sqrt(d) first."""
        if z.shape[0] < n:
            reps = math.ceil(n / z.shape[0])
            z = z.repeat(reps, 1)
            z = z + torch.randn_like(z) * (0.01 / math.sqrt(z.shape[1]))
        return z[torch.randperm(z.shape[0], device=z.device)[:n]]

    @torch.no_grad()
    def init_from(self, z: torch.Tensor) -> None:
        rows = self.sample_rows(z.float(), self.size)
        self.embed.copy_(rows)
        self.embed_avg.copy_(rows)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def apply_stats(self, counts: torch.Tensor, sums: torch.Tensor, z: torch.Tensor) -> None:
        """One EMA step given batch ``counts (K,)`` and ``sums (K, d)``, then reset the dead codes
        with random rows of ``z (N, d)`` (no host sync)."""
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embed_avg.lerp_(sums, 1 - self.decay)
        dead = (self.cluster_size < self.dead_threshold)[:, None]                  # (K, 1)
        rows = self.sample_rows(z, self.size)                                      # candidates (K, d)
        thr = torch.full_like(self.cluster_size, self.dead_threshold)
        self.embed.copy_(torch.where(dead, rows, self.embed_avg / self.cluster_size[:, None].clamp_min(1e-12)))
        self.embed_avg.copy_(torch.where(dead, rows * self.dead_threshold, self.embed_avg))
        self.cluster_size.copy_(torch.where(dead[:, 0], thr, self.cluster_size))

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """The EMA step and dead-code reset on the (global) batch ``z (N_r, d)`` with codes ``idx (N_r,)``."""
        counts, sums = code_stats(idx, z, self.size)                               # (K,), (K, d)
        if _world() == 1:
            return self.apply_stats(counts, sums, z)
        dist.all_reduce(counts)
        dist.all_reduce(sums)
        zg = _gather_rows(z.contiguous())
        if dist.get_rank() == 0:
            self.apply_stats(counts, sums, zg)
        self._broadcast()

    @torch.no_grad()
    def _init(self, z: torch.Tensor) -> None:
        if _world() == 1:
            return self.init_from(z)
        zg = _gather_rows(z.float().contiguous())
        if dist.get_rank() == 0:
            self.init_from(zg)
        self._broadcast()

    def _broadcast(self) -> None:
        for t in (self.embed, self.embed_avg, self.cluster_size, self.initted):
            dist.broadcast(t, 0)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initted):
            self._init(z)
        if not bool(self.initted):
            raise RuntimeError("Codebook: not initialised; train the model (the first training batch "
                               "initialises it) or load a checkpoint with VQVAE.from_pretrained")
        idx, _, zq = quantize(z, self.embed)
        if self.training:
            self.update(z, idx)
        return idx, zq


def perplexity(idx: torch.Tensor, size: int) -> torch.Tensor:
    """exp(entropy) of the code histogram, LM-listener's formula: exp(-sum p log(p + 1e-7))."""
    p = torch.bincount(idx.flatten(), minlength=size).float()
    p = p / p.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p + 1e-7)).sum())


@dataclass
class VQOutput:
    recon: torch.Tensor          # (B, T, 56) raw coefficients
    loss: torch.Tensor           # scalar, Eq. 6
    losses: dict                 # embed, commit, rec, veloc (scalars)
    codes: torch.Tensor          # (B, T / r) int64
    perplexity: torch.Tensor     # scalar, of this batch's codes


# ----------------------------------------------------------------------------- the model
class VQVAE(nn.Module):
    """Listener-motion VQ-VAE. See the module docstring for the architecture and conventions."""

    def __init__(self, config: VQConfig | None = None):
        super().__init__()
        self.config = c = config or VQConfig()
        self.encoder = Encoder(c)
        self.quantizer = Codebook(c.codebook_size, c.code_dim, c.decay, c.dead_threshold)
        self.decoder = Decoder(c)
        self.register_buffer("motion_mean", torch.zeros(c.d_motion))
        self.register_buffer("motion_std", torch.ones(c.d_motion))

    # ------------------------------------------------------------------ construction / io
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VQVAE":
        """``naive`` (none, none) or ``disentangled`` (in, adain); ``overrides`` go to VQConfig."""
        if name not in PRESETS:
            raise ValueError(f"preset: expected one of {tuple(PRESETS)}, got {name!r}")
        return cls(VQConfig(**{**PRESETS[name], **overrides}))

    @property
    def codebook(self) -> torch.Tensor:
        """The LR code embeddings (K, d_c)."""
        return self.quantizer.embed

    @property
    def needs_beta(self) -> bool:
        return self.config.needs_beta

    @property
    def rate(self) -> int:
        return self.config.rate

    @property
    def receptive_field(self) -> int:
        """Codes of context on EACH side that a decoded frame depends on through the convolutions
        (the decoder is non-causal). ``in``/``adain`` decoders additionally see global window
        statistics; see the module docstring."""
        return math.ceil(self.decoder.receptive_radius() - 1e-9)

    @torch.no_grad()
    def set_motion_stats(self, mean, std, min_std: float = 1e-4) -> None:
        """Dataset mean/std (56,) of the listener motion; std is floored at ``min_std``."""
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        for name, t in (("mean", mean), ("std", std)):
            if t.shape != (self.config.d_motion,) or not torch.isfinite(t).all():
                raise ValueError(f"motion {name}: expected finite shape ({self.config.d_motion},), got {tuple(t.shape)}")
        self.motion_mean.copy_(mean)
        self.motion_std.copy_(std.clamp_min(min_std))

    def save_pretrained(self, directory) -> None:
        """``config.json`` + ``model.safetensors`` (atomic)."""
        save_checkpoint(directory, {"format": FORMAT, "version": 1, **asdict(self.config)}, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "VQVAE":
        return load_model(directory, cls, VQConfig, FORMAT, old=OLD_TAG, map_location=map_location)

    # ------------------------------------------------------------------ input checks
    def _check_motion(self, motion) -> torch.Tensor:
        m = torch.as_tensor(motion)
        if m.dim() != 3 or m.shape[-1] != self.config.d_motion:
            raise ValueError(f"motion: expected shape (B, T, {self.config.d_motion}), got {tuple(m.shape)}")
        if not m.is_floating_point():
            raise ValueError(f"motion: expected a float tensor, got dtype {m.dtype}")
        T, r = m.shape[1], self.rate
        if T < r or T % r:
            raise ValueError(f"motion: expected T a positive multiple of r={r} (crop to T - T % {r} first), got T={T}")
        if not torch.isfinite(m).all():
            raise ValueError("motion: expected finite values, got NaN/inf")
        return m.to(self.motion_mean.device, torch.float32)

    def _check_beta(self, beta, B: int) -> torch.Tensor | None:
        if beta is None:
            if self.needs_beta:
                raise ValueError(f"beta: this model (dec_norm={self.config.dec_norm!r}) needs the listener's "
                                 f"shape beta of shape ({B}, {self.config.n_shape}), got None")
            return None
        b = torch.as_tensor(beta)
        if b.shape != (B, self.config.n_shape):
            raise ValueError(f"beta: expected shape ({B}, {self.config.n_shape}), got {tuple(b.shape)}")
        if not b.is_floating_point() or not torch.isfinite(b).all():
            raise ValueError(f"beta: expected finite float values, got dtype {b.dtype} with non-finite entries "
                             f"{int((~torch.isfinite(b.float())).sum())}")
        return b.to(self.motion_mean.device, torch.float32) if self.needs_beta else None

    def _check_codes(self, codes) -> torch.Tensor:
        c = torch.as_tensor(codes)
        if c.dim() != 2 or c.shape[1] < 1:
            raise ValueError(f"codes: expected shape (B, L) with L >= 1, got {tuple(c.shape)}")
        if c.is_floating_point() or c.dtype == torch.bool:
            raise ValueError(f"codes: expected an integer tensor, got dtype {c.dtype}")
        K = self.config.codebook_size
        if c.numel() and (c.min() < 0 or c.max() >= K):
            raise ValueError(f"codes: expected values in [0, {K}), got min {int(c.min())}, max {int(c.max())}")
        return c.to(self.motion_mean.device, torch.long)

    # ------------------------------------------------------------------ codebook
    @property
    def initialised(self) -> bool:
        """Whether the codebook holds codes (the first training batch, a checkpoint or :meth:`set_codebook`)."""
        return bool(self.quantizer.initted)

    @torch.no_grad()
    def set_codebook(self, embed) -> None:
        """Use ``embed`` (K, d_c) as the codebook (EMA statistics restart from it: count 1 per code),
        e.g. random codes for a benchmark or a test."""
        e = torch.as_tensor(embed)
        K, d = self.config.codebook_size, self.config.code_dim
        if e.shape != (K, d) or not e.is_floating_point() or not torch.isfinite(e).all():
            raise ValueError(f"codebook: expected finite float values of shape ({K}, {d}), got shape "
                             f"{tuple(e.shape)} dtype {e.dtype}")
        q = self.quantizer
        q.embed.copy_(e)
        q.embed_avg.copy_(e)
        q.cluster_size.fill_(1.0)
        q.initted.fill_(True)

    # ------------------------------------------------------------------ the steps of encode / decode
    def _normalise(self, m: torch.Tensor) -> torch.Tensor:
        return (m - self.motion_mean) / self.motion_std                   # (B, T, 56)

    def _decode_latents(self, zq: torch.Tensor, beta) -> torch.Tensor:
        return self.decoder(zq.transpose(1, 2), beta).transpose(1, 2)     # (B, T, 56) normalised

    def encode_latents(self, motion) -> torch.Tensor:
        """motion (B, T, 56) raw (T a multiple of 8) -> encoder outputs z (B, T / 8, d_c), before quantization."""
        x = self._normalise(self._check_motion(motion))
        return self.encoder(x.transpose(1, 2)).transpose(1, 2)            # (B, L, d_c)

    def nearest_codes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize without updating the codebook: z (..., d_c) -> (codes (...) int64, z_q (..., d_c) fp32),
        the nearest code by squared L2 (Eq. 5)."""
        if not self.initialised:
            raise RuntimeError("VQVAE: codebook not initialised; train the model first or load it with from_pretrained")
        z = torch.as_tensor(z)
        if z.shape[-1:] != (self.config.code_dim,):
            raise ValueError(f"z: expected shape (..., {self.config.code_dim}), got {tuple(z.shape)}")
        flat = z.reshape(-1, z.shape[-1]).float()
        idx, _, zq = quantize(flat, self.quantizer.embed)
        return idx.view(z.shape[:-1]), zq.view(*z.shape[:-1], -1)

    def decode_latents(self, zq: torch.Tensor, beta=None) -> torch.Tensor:
        """Quantized latents z_q (B, L, d_c) + beta (B, 100) (required for AdaIN/AdaLN models) ->
        motion (B, 8L, 56) in raw coefficient space."""
        zq = torch.as_tensor(zq)
        if zq.dim() != 3 or zq.shape[-1] != self.config.code_dim:
            raise ValueError(f"zq: expected shape (B, L, {self.config.code_dim}), got {tuple(zq.shape)}")
        b = self._check_beta(beta, zq.shape[0])
        return self._decode_latents(zq, b) * self.motion_std + self.motion_mean

    def encode(self, motion, beta=None) -> torch.Tensor:
        """motion (B, T, 56) raw -> LR codes (B, T / 8) int64. The encoder has no identity input;
        ``beta`` is accepted for symmetry with ``decode`` and only shape-checked."""
        m = self._check_motion(motion)
        if beta is not None:
            self._check_beta(beta, m.shape[0])
        with torch.no_grad():
            return self.nearest_codes(self.encode_latents(m))[0]

    def decode(self, codes, beta=None) -> torch.Tensor:
        """codes (B, L) int64 in [0, K) + beta (B, 100) (required for AdaIN/AdaLN models) ->
        motion (B, 8L, 56) in raw coefficient space."""
        c = self._check_codes(codes)
        return self.decode_latents(F.embedding(c, self.quantizer.embed), beta)   # (B, L, d_c) -> motion

    def forward(self, motion, beta=None) -> VQOutput:
        """Reconstruct motion (B, T, 56) raw; in training mode also updates the EMA codebook."""
        m = self._check_motion(motion)
        b = self._check_beta(beta, m.shape[0])
        x = self._normalise(m)                                            # (B, T, 56) normalised
        z = self.encoder(x.transpose(1, 2)).transpose(1, 2)               # (B, L, d_c)
        B, L, d = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.reshape(B * L, d).float()
            if self.training:
                idx, zq = self.quantizer(zf.detach())
            else:
                idx, zq = self.nearest_codes(zf)
            embed = F.mse_loss(zf, zq.detach())                           # Eq. 2: encoder -> code
            commit = F.mse_loss(zf.detach(), zq)                          # Eq. 3: no grad with EMA
            zq = zf + (zq - zf).detach()                                  # straight-through
        y = self._decode_latents(zq.view(B, L, d).to(z.dtype), b)         # (B, T, 56) normalised
        rec = F.smooth_l1_loss(y, x)                                      # Eq. 4
        veloc = F.smooth_l1_loss(y[:, 1:] - y[:, :-1], x[:, 1:] - x[:, :-1])  # Eq. 5
        c = self.config
        loss = c.w_embed * embed + c.w_commit * commit + rec + c.w_veloc * veloc  # Eq. 6
        return VQOutput(
            recon=y * self.motion_std + self.motion_mean, loss=loss,
            losses=dict(embed=embed, commit=commit, rec=rec, veloc=veloc),
            codes=idx.view(B, L), perplexity=perplexity(idx, c.codebook_size),
        )
