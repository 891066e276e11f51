"""Identity-disentangled VQ-VAE, the tokenizer of listener responses (paper §3.2, supplement §2).

    motion (B, T, 56) -> norm -> Encoder -> z (B, L, d_c) -> Codebook -> codes (B, L) / z_q
    z_q + beta (B, 100) -> Decoder -> de-norm -> motion (B, T, 56),       L = T / r, r = 8

Presets: ``naive`` (no norms, LM-listener) and ``disentangled`` (IN encoder, AdaIN(beta) decoder).
T must be a positive multiple of r. Design, losses and conventions: docs/vqvae.md."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_model, save_checkpoint
from .data.segment import D_MOTION, N_SHAPE
from .distributed import get_env
from .errors import UserError
from .kernels.nearest_code import code_stats, quantize
from .kernels.norm_act import norm_act

FORMAT = "minilisten.VQVAE"      # config.json tag (checkpoint.load_model)
ENC_NORMS = ("none", "in", "ln")
DEC_NORMS = ("none", "in", "ln", "adain", "adaln")
PRESETS = {"naive": dict(enc_norm="none", dec_norm="none"), "disentangled": dict(enc_norm="in", dec_norm="adain")}


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
        for f, allowed in (("enc_norm", ENC_NORMS), ("dec_norm", DEC_NORMS)):
            if getattr(self, f) not in allowed:
                raise UserError(f"VQConfig.{f}: expected one of {allowed}, got {getattr(self, f)!r}")
        for f in fields(self):
            v, strict = getattr(self, f.name), f.name in ("eps", "fps")
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UserError(f"VQConfig.{f.name}: expected a positive int, got {v!r}")
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if f.type == "float" and not (number and (v > 0 if strict else v >= 0) and v != math.inf):   # NaN fails
                raise UserError(f"VQConfig.{f.name}: expected a finite number {'> 0' if strict else '>= 0'}, got {v!r}")
        if self.decay >= 1.0:
            raise UserError(f"VQConfig.decay: expected 0 <= decay < 1, got {self.decay!r}")

    @property
    def rate(self) -> int:
        """r: frames per LR code."""
        return 2 ** self.n_down

    @property
    def needs_beta(self) -> bool:
        return self.dec_norm in ("adain", "adaln")


class NormAct(nn.Module):
    """norm (none | in | ln | adain | adaln), affine ``(1 + scale) * x_hat + shift``, ReLU. x: (B, C, T); ident:
    (B, id_hidden), used by the adaptive kinds only (scale, shift: (B, C) from it, else parameters (C,))."""

    def __init__(self, kind: str, channels: int, id_hidden: int, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps
        if kind in ("in", "ln"):
            self.scale = nn.Parameter(torch.zeros(channels))
            self.shift = nn.Parameter(torch.zeros(channels))
        elif kind in ("adain", "adaln"):
            self.to_affine = nn.Linear(id_hidden, 2 * channels)  # beta embedding -> (scale, shift), starts as IN/LN
            nn.init.zeros_(self.to_affine.weight)
            nn.init.zeros_(self.to_affine.bias)

    def forward(self, x: torch.Tensor, ident: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "none":
            return F.relu(x)
        adaptive = self.kind in ("adain", "adaln")
        scale, shift = self.to_affine(ident).chunk(2, dim=-1) if adaptive else (self.scale, self.shift)
        if self.kind in ("in", "adain"):   # instance norm over T: the fused kernel
            return norm_act(x, scale, shift, relu=True, eps=self.eps)
        xh = F.layer_norm(x.transpose(1, 2), (x.shape[1],), eps=self.eps).transpose(1, 2)  # over C per frame
        scale, shift = scale.view(-1, x.shape[1], 1), shift.view(-1, x.shape[1], 1)
        return F.relu((1 + scale) * xh + shift)


class ResBlock(nn.Module):
    """Pre-activation residual block (T2M-GPT): ``x + conv1x1(na2(conv3_dil(na1(x))))``. x: (B, C, T)."""

    def __init__(self, channels: int, norm: str, dilation: int, id_hidden: int, eps: float):
        super().__init__()
        self.na1 = NormAct(norm, channels, id_hidden, eps)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.na2 = NormAct(norm, channels, id_hidden, eps)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x, ident=None):
        return x + self.conv2(self.na2(self.conv1(self.na1(x, ident)), ident))


def _stages(c: VQConfig, norm: str, resample) -> tuple[nn.ModuleList, nn.ModuleList]:
    """n_down x (res_depth ResBlocks with dilations growth ** i, then ``resample()``), built in that order."""
    blocks, convs = nn.ModuleList(), nn.ModuleList()
    for _ in range(c.n_down):
        blocks.append(nn.ModuleList(ResBlock(c.width, norm, c.dilation_growth ** i, c.id_hidden, c.eps)
                                    for i in range(c.res_depth)))
        convs.append(resample())
    return blocks, convs


class Encoder(nn.Module):
    """motion (B, 56, T) normalised -> z (B, d_c, T / r). No identity input."""

    def __init__(self, c: VQConfig):
        super().__init__()
        self.conv_in = nn.Conv1d(c.d_motion, c.width, 3, padding=1)
        self.blocks, self.downs = _stages(c, c.enc_norm, lambda: nn.Conv1d(c.width, c.width, 4, stride=2, padding=1))
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
            h = c.id_hidden
            self.id_mlp = nn.Sequential(nn.Linear(c.n_shape, h), nn.SiLU(), nn.Linear(h, h))
        self.conv_in = nn.Conv1d(c.code_dim, c.width, 3, padding=1)
        self.blocks, self.ups = _stages(c, c.dec_norm, lambda: nn.Conv1d(c.width, c.width, 3, padding=1))
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


def _sample_rows(z: torch.Tensor, n: int) -> torch.Tensor:
    """n random rows of z (N, d); when N < n, z is tiled with noise of std 0.01 / sqrt(d) first."""
    if z.shape[0] < n:
        z = z.repeat(math.ceil(n / z.shape[0]), 1)
        z = z + torch.randn_like(z) * (0.01 / math.sqrt(z.shape[1]))
    return z[torch.randperm(z.shape[0], device=z.device)[:n]]


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x (N_r, d)`` concatenated in rank order; ranks may hold different N_r."""
    n = torch.tensor([x.shape[0]], device=x.device)
    ns = [torch.zeros_like(n) for _ in range(get_env().world_size)]
    dist.all_gather(ns, n)
    pad = torch.cat([x, x.new_zeros(int(max(ns)) - x.shape[0], x.shape[1])])
    outs = [torch.empty_like(pad) for _ in ns]
    dist.all_gather(outs, pad)
    return torch.cat([o[:int(k)] for o, k in zip(outs, ns)])


class Codebook(nn.Module):
    """EMA codebook with first-batch init and dead-code reset. z: (N, d) fp32 -> (idx (N,), z_q (N, d)).
    ``forward`` updates it in training mode, on the global batch under torch.distributed (docs/vqvae.md)."""

    def __init__(self, size: int, dim: int, decay: float = 0.99, dead_threshold: float = 1.0):
        super().__init__()
        self.size, self.dim, self.decay, self.dead_threshold = size, dim, decay, dead_threshold
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("cluster_size", torch.zeros(size))      # EMA of per-code counts (K,)
        self.register_buffer("embed_avg", torch.zeros(size, dim))    # EMA of per-code sums   (K, d)
        self.register_buffer("embed", torch.zeros(size, dim))        # the codebook           (K, d)

    @torch.no_grad()
    def set(self, embed: torch.Tensor) -> None:
        """Use ``embed (K, d)`` as the codebook; the EMA statistics restart from it (count 1 per code)."""
        self.embed.copy_(embed)
        self.embed_avg.copy_(embed)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    def init_from(self, z: torch.Tensor) -> None:
        """The first-batch initialisation: K random rows of ``z (N, d)``."""
        self.set(_sample_rows(z.float(), self.size))

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """One EMA step on the (global) batch ``z (N_r, d)`` with codes ``idx (N_r,)``, then the dead codes reset
        to random rows of the batch; a reset code restarts at count = threshold (no host sync)."""
        counts, sums = code_stats(idx, z, self.size)                               # (K,), (K, d)
        if get_env().distributed:
            dist.all_reduce(counts)
            dist.all_reduce(sums)

        def step(z: torch.Tensor) -> None:
            self.cluster_size.lerp_(counts, 1 - self.decay)
            self.embed_avg.lerp_(sums, 1 - self.decay)
            dead = (self.cluster_size < self.dead_threshold)[:, None]              # (K, 1)
            rows = _sample_rows(z, self.size)                                      # candidates (K, d)
            self.embed.copy_(torch.where(dead, rows, self.embed_avg / self.cluster_size[:, None].clamp_min(1e-12)))
            self.embed_avg.copy_(torch.where(dead, rows * self.dead_threshold, self.embed_avg))
            self.cluster_size.masked_fill_(dead[:, 0], self.dead_threshold)
        self._on_rank0(step, z)

    def _on_rank0(self, fn, z: torch.Tensor) -> None:
        """``fn(z)``; under torch.distributed ``fn(global z)`` on rank 0, then its buffers broadcast."""
        if not get_env().distributed:
            return fn(z)
        zg = _gather_rows(z.float().contiguous())
        if dist.get_rank() == 0:
            fn(zg)
        for t in (self.embed, self.embed_avg, self.cluster_size, self.initted):
            dist.broadcast(t, 0)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initted):
            self._on_rank0(self.init_from, z)
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


def _tensor(x, name: str, shape: tuple, kind: str | None = "float") -> torch.Tensor:
    """``x`` as a tensor after checking its shape (a str: any size; "..." first: any leading dims) and its
    dtype (``kind`` "float": floating and finite, "int": integer, None: any); UserError naming ``name``."""
    t = torch.as_tensor(x)
    lead = shape[0] == "..."
    dims = t.shape[max(t.dim() - len(shape) + 1, 0):] if lead else t.shape
    if len(dims) != len(shape) - lead or any(isinstance(w, int) and w != n for w, n in zip(shape[lead:], dims)):
        raise UserError(f"{name}: expected shape ({', '.join(map(str, shape))}{',' * (len(shape) == 1)}), "
                        f"got {tuple(t.shape)}")
    if kind and (t.is_floating_point() != (kind == "float") or t.dtype == torch.bool):
        what = "a float" if kind == "float" else "an integer"
        raise UserError(f"{name}: expected {what} tensor, got dtype {t.dtype}")
    if kind == "float" and not torch.isfinite(t).all():
        raise UserError(f"{name}: expected finite values, got NaN/inf")
    return t


@dataclass
class VQOutput:
    recon: torch.Tensor          # (B, T, 56) raw coefficients
    loss: torch.Tensor           # scalar, Eq. 6
    losses: dict                 # embed, commit, rec, veloc (scalars)
    codes: torch.Tensor          # (B, T / r) int64
    perplexity: torch.Tensor     # scalar, of this batch's codes


class VQVAE(nn.Module):
    """Listener-motion VQ-VAE; motion in and out is in raw coefficients (docs/vqvae.md)."""

    def __init__(self, config: VQConfig | None = None):
        super().__init__()
        self.config = c = config or VQConfig()
        self.rate, self.needs_beta = c.rate, c.needs_beta     # r frames per code; whether decoding needs beta
        self.encoder = Encoder(c)
        self.quantizer = Codebook(c.codebook_size, c.code_dim, c.decay, c.dead_threshold)
        self.decoder = Decoder(c)
        self.register_buffer("motion_mean", torch.zeros(c.d_motion))
        self.register_buffer("motion_std", torch.ones(c.d_motion))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VQVAE":
        """``naive`` (none, none) or ``disentangled`` (in, adain); ``overrides`` go to VQConfig."""
        if name not in PRESETS:
            raise UserError(f"preset: expected one of {tuple(PRESETS)}, got {name!r}")
        return cls(VQConfig(**{**PRESETS[name], **overrides}))

    @property
    def codebook(self) -> torch.Tensor:
        """The LR code embeddings (K, d_c)."""
        return self.quantizer.embed

    @property
    def receptive_field(self) -> int:
        """Codes of context on EACH side that a decoded frame depends on through the (non-causal)
        convolutions; ``in``/``adain`` decoders also see the window's statistics."""
        c, r = self.config, 1.0                                              # conv_in, k=3 at code rate
        for s in range(c.n_down):                                            # 2 ** s samples per code
            r += sum(c.dilation_growth ** i for i in range(c.res_depth)) / 2 ** s   # dilated k=3 convs
            r += 1.0 / 2 ** (s + 1)                                          # conv after nearest x2
        return math.ceil(r + 2.0 / c.rate - 1e-9)                            # + conv_post + conv_out

    @property
    def initialised(self) -> bool:
        """Whether the codebook holds codes (the first training batch, a checkpoint or :meth:`set_codebook`)."""
        return bool(self.quantizer.initted)

    @torch.no_grad()
    def set_motion_stats(self, mean, std, min_std: float = 1e-4) -> None:
        """Dataset mean/std (56,) of the listener motion; std is floored at ``min_std``."""
        d = (self.config.d_motion,)
        self.motion_mean.copy_(_tensor(torch.as_tensor(mean, dtype=torch.float32), "motion mean", d))
        self.motion_std.copy_(_tensor(torch.as_tensor(std, dtype=torch.float32), "motion std", d).clamp_min(min_std))

    @torch.no_grad()
    def set_codebook(self, embed) -> None:
        """Use ``embed`` (K, d_c) as the codebook (count 1 per code), e.g. random codes for a benchmark."""
        self.quantizer.set(_tensor(embed, "codebook", (self.config.codebook_size, self.config.code_dim)))

    def save_pretrained(self, directory) -> None:
        """``config.json`` + ``model.safetensors`` (atomic)."""
        save_checkpoint(directory, {"format": FORMAT, "version": 1, **asdict(self.config)}, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "VQVAE":
        return load_model(directory, cls, VQConfig, FORMAT, map_location=map_location)

    def _check_motion(self, motion) -> torch.Tensor:
        m, r = _tensor(motion, "motion", ("B", "T", self.config.d_motion)), self.rate
        if m.shape[1] < r or m.shape[1] % r:
            raise UserError(f"motion: expected T a positive multiple of r={r} (crop to T - T % {r} first), "
                            f"got T={m.shape[1]}")
        return m.to(self.motion_mean.device, torch.float32)

    def _check_beta(self, beta, B: int) -> torch.Tensor | None:
        if beta is None and self.needs_beta:
            raise UserError(f"beta: this model (dec_norm={self.config.dec_norm!r}) needs the listener's "
                            f"shape beta of shape ({B}, {self.config.n_shape}), got None")
        b = None if beta is None else _tensor(beta, "beta", (B, self.config.n_shape))
        return b.to(self.motion_mean.device, torch.float32) if self.needs_beta else None

    def _check_codes(self, codes) -> torch.Tensor:
        c, K = _tensor(codes, "codes", ("B", "L"), "int"), self.config.codebook_size
        if c.shape[1] < 1:
            raise UserError(f"codes: expected shape (B, L) with L >= 1, got {tuple(c.shape)}")
        if c.numel() and (c.min() < 0 or c.max() >= K):
            raise UserError(f"codes: expected values in [0, {K}), got min {int(c.min())}, max {int(c.max())}")
        return c.to(self.motion_mean.device, torch.long)

    def encode_latents(self, motion) -> torch.Tensor:
        """motion (B, T, 56) raw -> encoder outputs z (B, T / r, d_c), before quantization."""
        x = (self._check_motion(motion) - self.motion_mean) / self.motion_std
        return self.encoder(x.transpose(1, 2)).transpose(1, 2)

    def nearest_codes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize without updating: z (..., d_c) -> (codes (...) int64, z_q (..., d_c) fp32), nearest L2 (Eq. 5)."""
        if not self.initialised:
            raise RuntimeError("VQVAE: codebook not initialised; train the model first or load it with from_pretrained")
        z = _tensor(z, "z", ("...", self.config.code_dim), None)
        idx, _, zq = quantize(z.reshape(-1, z.shape[-1]).float(), self.quantizer.embed)
        return idx.view(z.shape[:-1]), zq.view(*z.shape[:-1], -1)

    def decode_latents(self, zq: torch.Tensor, beta=None) -> torch.Tensor:
        """z_q (B, L, d_c) + beta (B, 100) (AdaIN/AdaLN models) -> motion (B, r L, 56) raw."""
        zq = _tensor(zq, "zq", ("B", "L", self.config.code_dim), None)
        b = self._check_beta(beta, zq.shape[0])
        return self.decoder(zq.transpose(1, 2), b).transpose(1, 2) * self.motion_std + self.motion_mean

    @torch.no_grad()
    def encode(self, motion, beta=None) -> torch.Tensor:
        """motion (B, T, 56) raw -> codes (B, T / r) int64; ``beta`` is only shape-checked (no identity input)."""
        z = self.encode_latents(motion)
        if beta is not None:
            self._check_beta(beta, z.shape[0])
        return self.nearest_codes(z)[0]

    def decode(self, codes, beta=None) -> torch.Tensor:
        """codes (B, L) in [0, K) + beta (B, 100) (AdaIN/AdaLN models) -> motion (B, r L, 56) raw."""
        return self.decode_latents(F.embedding(self._check_codes(codes), self.quantizer.embed), beta)

    def forward(self, motion, beta=None) -> VQOutput:
        """Reconstruct motion (B, T, 56) raw with the losses (Eq. 2-6); training mode updates the codebook."""
        m = self._check_motion(motion)
        b = self._check_beta(beta, m.shape[0])
        x = (m - self.motion_mean) / self.motion_std                      # (B, T, 56) normalised
        z = self.encoder(x.transpose(1, 2)).transpose(1, 2)               # (B, L, d_c)
        B, L, d = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.reshape(B * L, d).float()
            idx, zq = self.quantizer(zf.detach()) if self.training else self.nearest_codes(zf)
            embed = F.mse_loss(zf, zq.detach())                           # Eq. 2: encoder -> code
            commit = F.mse_loss(zf.detach(), zq)                          # Eq. 3: no grad with EMA
            zq = zf + (zq - zf).detach()                                  # straight-through
        y = self.decoder(zq.view(B, L, d).to(z.dtype).transpose(1, 2), b).transpose(1, 2)   # (B, T, 56) normalised
        rec = F.smooth_l1_loss(y, x)                                      # Eq. 4
        veloc = F.smooth_l1_loss(y[:, 1:] - y[:, :-1], x[:, 1:] - x[:, :-1])  # Eq. 5
        c = self.config
        loss = c.w_embed * embed + c.w_commit * commit + rec + c.w_veloc * veloc  # Eq. 6
        return VQOutput(recon=y * self.motion_std + self.motion_mean, loss=loss,
                        losses=dict(embed=embed, commit=commit, rec=rec, veloc=veloc),
                        codes=idx.view(B, L), perplexity=perplexity(idx, c.codebook_size))
