"""Several processes (GPUs) for ``train-vq`` / ``train-lm``: plain ``torch.distributed``.

Why plain ``torch.distributed`` and not HF ``accelerate``: no new dependency (torch ships it),
``torchrun`` is the launcher (``torchrun --nproc_per_node N -m minilisten train-lm ...``), and the
``gloo`` backend runs the same code on CPU, so the equivalence tests run in CI without a GPU. The
pieces are small enough to read in one sitting:

- :func:`init_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (one process
  when they are absent) and opens the process group (``nccl`` on CUDA, ``gloo`` on CPU).
- Data: every rank draws the *same global batch* (same seed, same sampler state) and keeps its
  slice (:func:`rank_slice`: rank ``r`` of ``W`` takes rows ``[r B/W, (r+1) B/W)``), so the global
  order of samples does not depend on the number of processes and ``--resume`` works with another
  one. :class:`GlobalBatchSampler` is the epoch-based form (a seeded permutation per epoch;
  ``{epoch, position}`` is its whole state).
- :func:`average_gradients`: after ``backward`` each gradient is summed over ranks and divided by
  ``W`` (bucketed ``all_reduce``). With equal per-rank batch sizes and losses that are means over
  the batch, the result is the gradient of the global batch's mean loss. For losses that are means
  over a varying number of tokens use :func:`count_weights` (token-weighted global mean).
- VQ-VAE codebook (:func:`codebook_init`, :func:`codebook_update`): the EMA statistics (code counts
  ``cluster_size`` and sums ``embed_avg``) are all-reduced, so the EMA step sees the global batch;
  the global batch's latents are gathered on rank 0, which initialises the codebook and decides the
  dead-code reset (with its RNG, exactly as one process with the global batch would), and the
  buffers are broadcast: every rank holds the same codebook.
- :class:`Precision` (``--precision bf16|fp16|fp32``: autocast, ``GradScaler`` for fp16; the VQ
  maths stays fp32 inside the model) and :class:`ScaledStep` (``--grad-accum`` micro-batches,
  autocast forward, scaled backward, gradient averaging, unscale, clip, optimizer step; the logged
  loss and stats are the global ones).
- :class:`Throughput`: samples/s, LM tokens/s, step time, peak memory and, on a known GPU, an
  estimate of model-FLOPs utilisation.
- Rank-0 work: :func:`is_main` (checkpoints, logs, progress bars), :func:`all_reduce_sums`
  (sharded evaluation: each rank evaluates :func:`shard_bounds` of the items, sums are added).

Equivalence (``tests/test_distributed.py``): W processes x batch b == 1 process x batch W b with the
same data order, up to float summation order (parameters and codebook within 1e-5 after a few
steps on CPU). What is per rank and therefore only statistically equal: dropout and the LM's
input LR-token noise (seeded per rank).
"""
from __future__ import annotations

import datetime
import math
import os
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistEnv", "env_from_os", "init_distributed", "get_env", "is_main", "barrier", "shutdown", "finish",
           "rank_slice", "shard_bounds", "GlobalBatchSampler", "average_gradients", "count_weights",
           "all_reduce_sums", "all_gather_rows", "broadcast_tensors", "collective_device",
           "codebook_init", "codebook_update",
           "PRECISIONS", "Precision", "ScaledStep", "Throughput", "lm_flops_per_token", "peak_flops"]


# ----------------------------------------------------------------------------- process group
@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None   # None: single process, no process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_ENV = DistEnv()


def env_from_os(environ=None) -> DistEnv:
    """``DistEnv`` from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a single
    process when ``WORLD_SIZE`` is absent. Bad values raise ValueError naming the variable."""
    environ = os.environ if environ is None else environ
    vals = {}
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", None)):
        raw = environ.get(name, default)
        if raw is None:
            continue
        try:
            vals[name] = int(raw)
        except ValueError:
            raise ValueError(f"environment {name}: expected an integer, got {raw!r}") from None
    world, rank = vals["WORLD_SIZE"], vals["RANK"]
    local = vals.get("LOCAL_RANK", rank)
    if world < 1:
        raise ValueError(f"environment WORLD_SIZE: expected >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"environment RANK: expected 0 <= RANK < WORLD_SIZE = {world}, got {rank}")
    if local < 0:
        raise ValueError(f"environment LOCAL_RANK: expected >= 0, got {local}")
    return DistEnv(rank, world, local, None)


def init_distributed(device: str = "cpu", backend: str | None = None, timeout_s: float = 1800) -> tuple[DistEnv, str]:
    """Open the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns
    ``(env, device)`` where ``device`` is this rank's (``cuda`` -> ``cuda:LOCAL_RANK``).
    Backend: ``nccl`` for CUDA, ``gloo`` otherwise (or ``backend``). Idempotent."""
    global _ENV
    e = env_from_os()
    dev = str(device)
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if e.distributed or dev == "cuda":
            dev = f"cuda:{e.local_rank}" if e.distributed else "cuda"
        if e.distributed:
            if e.local_rank >= torch.cuda.device_count():
                raise ValueError(f"environment LOCAL_RANK: expected < the {torch.cuda.device_count()} visible GPUs, "
                                 f"got {e.local_rank} (use --nproc_per_node <= the number of GPUs)")
            torch.cuda.set_device(e.local_rank)
    if not e.distributed:
        _ENV = e
        return e, dev
    be = backend or ("nccl" if dev.startswith("cuda") else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(be, timeout=datetime.timedelta(seconds=timeout_s))
    if dist.get_world_size() != e.world_size or dist.get_rank() != e.rank:
        raise ValueError(f"process group: expected rank {e.rank} of {e.world_size} (environment), "
                         f"got {dist.get_rank()} of {dist.get_world_size()}")
    _ENV = DistEnv(e.rank, e.world_size, e.local_rank, be)
    return _ENV, dev


def get_env() -> DistEnv:
    """The current :class:`DistEnv` (a single process until :func:`init_distributed` opened a group)."""
    if _ENV.distributed and not dist.is_initialized():   # the group was destroyed behind our back
        return DistEnv()
    return _ENV


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes checkpoints and logs."""
    return get_env().is_main


def barrier() -> None:
    if get_env().distributed:
        dist.barrier()


def shutdown() -> None:
    """Close the process group (no-op for one process)."""
    global _ENV
    if dist.is_initialized():
        dist.barrier()   # nobody tears down (rank 0 hosts the store) while another rank still talks
        dist.destroy_process_group()
    _ENV = DistEnv()


def finish(code: int, env: DistEnv) -> int:
    """End of a CLI command: for a torchrun worker (``env.distributed``), flush and leave with
    ``os._exit(code)`` after :func:`shutdown`; otherwise return ``code``. Why: with gloo under
    torchrun (torch 2.13, CPU) about 1 in 6 worker processes aborted in interpreter finalization
    ("terminate called without an active exception", no Python frame) after a clean
    ``destroy_process_group``; everything a run writes is already on disk (atomically) by then."""
    if not env.distributed:
        return code
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ----------------------------------------------------------------------------- data
def rank_slice(global_batch: int, env: DistEnv | None = None, what: str = "--batch-size") -> slice:
    """This rank's rows of a global batch: rank ``r`` of ``W`` takes ``[r B/W, (r+1) B/W)``.
    ``global_batch`` must be divisible by ``W`` (ValueError naming ``what``)."""
    env = env or get_env()
    if global_batch % env.world_size:
        raise ValueError(f"{what}: expected a multiple of the number of processes ({env.world_size}), "
                         f"got {global_batch}")
    b = global_batch // env.world_size
    return slice(env.rank * b, (env.rank + 1) * b)


def shard_bounds(n: int, env: DistEnv | None = None) -> tuple[int, int]:
    """Contiguous shard ``[lo, hi)`` of ``n`` items for this rank (sizes differ by at most one;
    a rank may get none). Used by sharded evaluation."""
    env = env or get_env()
    return n * env.rank // env.world_size, n * (env.rank + 1) // env.world_size


class GlobalBatchSampler:
    """Epochs over ``n`` items in a seeded order: epoch ``e`` is ``default_rng([seed, e]).permutation(n)``
    (``range(n)`` without ``shuffle``). :meth:`next_global` returns the next ``count`` indices of that
    stream (crossing into the next epoch when needed); every rank calls it with the *global* batch
    size and keeps :func:`rank_slice` of the result, so the order does not depend on the number of
    processes. State: ``{"epoch", "position"}`` (+ ``n``, ``seed`` to check on load)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"GlobalBatchSampler n: expected a positive int (dataset size), got {n!r}")
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.epoch, self.position = 0, 0
        self._order = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                           else np.arange(self.n))
        return self._order

    def next_global(self, count: int) -> np.ndarray:
        """The next ``count`` global indices (int64, may span epochs)."""
        if not (isinstance(count, int) and count >= 1):
            raise ValueError(f"GlobalBatchSampler.next_global count: expected a positive int, got {count!r}")
        out = []
        while count:
            take = min(count, self.n - self.position)
            out.append(self._epoch_order()[self.position:self.position + take])
            self.position += take
            count -= take
            if self.position == self.n:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return np.concatenate(out).astype(np.int64)

    def next_local(self, global_batch: int, env: DistEnv | None = None) -> np.ndarray:
        """This rank's slice of the next global batch."""
        return self.next_global(global_batch)[rank_slice(global_batch, env)]

    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "shuffle": self.shuffle, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        for k in ("n", "seed", "shuffle"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"sampler state {k}: expected {getattr(self, k)!r} (this run), got {state[k]!r} "
                                 "(the saved run); the data or --seed changed")
        epoch, pos = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= pos < self.n:
            raise ValueError(f"sampler state: expected epoch >= 0 and 0 <= position < {self.n}, got {epoch}, {pos}")
        self.epoch, self.position, self._order = epoch, pos, None


# ----------------------------------------------------------------------------- collectives
def _flat_buckets(tensors: list[torch.Tensor], bucket_bytes: int):
    """Group tensors by (device, dtype) into buckets of about ``bucket_bytes``."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for ts in groups.values():
        cur, size = [], 0
        for t in ts:
            cur.append(t)
            size += t.numel() * t.element_size()
            if size >= bucket_bytes:
                yield cur
                cur, size = [], 0
        if cur:
            yield cur


def average_gradients(params: Iterable[torch.nn.Parameter], env: DistEnv | None = None,
                      bucket_mb: float = 25.0) -> None:
    """Replace every ``p.grad`` by its mean over ranks (in place; no-op for one process).
    A parameter without a gradient on some rank counts as zero there; one without a gradient on
    every rank keeps ``grad = None`` (as in a single process, the optimizer then skips it)."""
    env = env or get_env()
    if not env.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    dev = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    dist.all_reduce(has)
    live = []
    for p, h in zip(params, has.tolist()):
        if h > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            live.append(p.grad)
    for bucket in _flat_buckets(live, int(bucket_mb * 2 ** 20)):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= env.world_size
        off = 0
        for g in bucket:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()


def count_weights(counts: list[int], env: DistEnv | None = None) -> list[float]:
    """Loss weights for a token-weighted global mean. ``counts[k]``: targets in this rank's
    micro-batch ``k`` (of ``A = len(counts)``). With ``loss_k`` the mean over micro-batch ``k``,
    ``sum_k w_k * loss_k / A`` averaged over ranks (what :class:`ScaledStep` + :func:`average_gradients`
    compute) equals the mean over all targets of the global batch: ``w_k = W A counts[k] / total``."""
    env = env or get_env()
    c = torch.tensor([float(x) for x in counts], dtype=torch.float64)
    total = c.sum()
    if env.distributed:
        total = total.to(collective_device())
        dist.all_reduce(total)
        total = total.cpu()
    total = float(total)
    if total <= 0:
        return [0.0 for _ in counts]
    return [env.world_size * len(counts) * x / total for x in c.tolist()]


def collective_device() -> torch.device:
    """CUDA for nccl, CPU for gloo."""
    env = get_env()
    if env.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(values: dict, env: DistEnv | None = None) -> dict:
    """``{name: number or tensor}`` summed over ranks (float64 for numbers; tensors in place).
    Returns a new dict with the same kinds (numbers come back as float)."""
    env = env or get_env()
    if not env.distributed:
        return dict(values)
    dev = collective_device()
    nums = [k for k, v in values.items() if not torch.is_tensor(v)]
    out = dict(values)
    if nums:
        t = torch.tensor([float(values[k]) for k in nums], dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        out.update({k: float(x) for k, x in zip(nums, t.tolist())})
    for k, v in values.items():
        if torch.is_tensor(v):
            moved = v.to(dev)
            dist.all_reduce(moved)
            out[k] = moved.to(v.device)
    return out


def all_gather_rows(x: torch.Tensor, env: DistEnv | None = None) -> torch.Tensor:
    """Concatenate ``x (N_r, ...)`` of every rank in rank order -> ``(sum N_r, ...)``. Ranks may hold
    different N_r (padded for the collective, trimmed after)."""
    env = env or get_env()
    if not env.distributed:
        return x
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    ns = [torch.zeros_like(n) for _ in range(env.world_size)]
    dist.all_gather(ns, n)
    ns = [int(v) for v in ns]
    m = max(ns)
    pad = x if x.shape[0] == m else torch.cat([x, x.new_zeros((m - x.shape[0],) + tuple(x.shape[1:]))])
    outs = [torch.empty_like(pad) for _ in range(env.world_size)]
    dist.all_gather(outs, pad.contiguous())
    return torch.cat([o[:k] for o, k in zip(outs, ns)])


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0, env: DistEnv | None = None) -> None:
    """Overwrite ``tensors`` (in place) with rank ``src``'s values."""
    env = env or get_env()
    if not env.distributed:
        return
    for t in tensors:
        dist.broadcast(t, src)


# ----------------------------------------------------------------------------- VQ-VAE codebook
def _codebook_buffers(cb) -> list[torch.Tensor]:
    return [cb.embed, cb.embed_avg, cb.cluster_size, cb.initted]


@torch.no_grad()
def codebook_init(cb, z: torch.Tensor, env: DistEnv | None = None) -> None:
    """First-batch initialisation of a :class:`~minilisten.vqvae.Codebook` from the *global* batch:
    ``z (N_r, d)`` of every rank gathered on all, rank 0 runs ``cb.init_from`` (its RNG draws the
    rows, as one process with the global batch would), the buffers are broadcast."""
    env = env or get_env()
    zg = all_gather_rows(z.float().contiguous(), env)
    if env.is_main:
        type(cb).init_from(cb, zg)   # the class's method: an instance may route init_from here
    broadcast_tensors(_codebook_buffers(cb), 0, env)


@torch.no_grad()
def codebook_update(cb, z: torch.Tensor, idx: torch.Tensor, env: DistEnv | None = None) -> None:
    """One EMA step of a :class:`~minilisten.vqvae.Codebook` on the global batch.

    ``z (N_r, d)`` fp32 latents and ``idx (N_r,)`` their codes on this rank. The batch statistics
    (counts (K,), sums (K, d)) are all-reduced; rank 0 gathers the global latents, applies
    ``cb.apply_stats(counts, sums, z_global)`` (EMA + dead-code reset, its RNG choosing the
    replacement rows) and broadcasts the codebook buffers. With one process this is exactly
    ``cb.update(z, idx)``."""
    from .vqvae import code_stats
    env = env or get_env()
    counts, sums = code_stats(idx, z, cb.size)
    if env.distributed:
        dist.all_reduce(counts)
        dist.all_reduce(sums)
    zg = all_gather_rows(z.contiguous(), env)
    if env.is_main:
        cb.apply_stats(counts, sums, zg)
    broadcast_tensors(_codebook_buffers(cb), 0, env)




# ----------------------------------------------------------------------------- precision and the step
PRECISIONS = ("fp32", "bf16", "fp16")


class Precision:
    """``--precision``: ``fp32`` (nothing), ``bf16`` (autocast to bfloat16) or ``fp16`` (autocast to
    float16 + a ``GradScaler``). Models keep fp32 master weights; the VQ-VAE's quantizer maths runs
    in fp32 inside autocast (``VQVAE.forward`` disables it there)."""

    def __init__(self, name: str = "fp32", device: str | torch.device = "cpu"):
        if name not in PRECISIONS:
            raise ValueError(f"--precision: expected one of {PRECISIONS}, got {name!r}")
        self.name = name
        self.device_type = torch.device(device).type
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=(name == "fp16"))

    def autocast(self):
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def state_dict(self) -> dict:
        return {"name": self.name, "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


class ScaledStep:
    """One optimizer step of ``grad_accum`` micro-batches across all ranks.

    ``micro_fn(step, k) -> (loss, stats)`` computes the loss of this rank's part of micro-batch
    ``k`` (a scalar tensor, the mean over that part) and float stats. Per step: zero grads; for
    each ``k``: forward under autocast, ``backward(loss / grad_accum)`` (scaled for fp16); average the
    gradients over ranks; unscale; clip to ``grad_clip`` (global norm); ``optimizer.step`` (skipped by
    the scaler on inf/NaN gradients in fp16). Returns the loss and stats averaged over micro-batches
    and ranks (``sum_keys`` are summed instead, e.g. token counts), identical on every rank. A
    non-finite loss on any rank raises FloatingPointError on all of them."""

    def __init__(self, optimizer: torch.optim.Optimizer, params=None, *, precision: Precision | str = "fp32",
                 device="cpu", grad_accum: int = 1, grad_clip: float = 0.0, env: DistEnv | None = None,
                 sum_keys=("tokens", "count", "correct", "samples"), desc: str = "train"):
        if not (isinstance(grad_accum, int) and not isinstance(grad_accum, bool) and grad_accum >= 1):
            raise ValueError(f"--grad-accum: expected a positive int, got {grad_accum!r}")
        self.optimizer, self.grad_accum, self.grad_clip = optimizer, grad_accum, grad_clip
        self.params = list(params) if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        self.precision = precision if isinstance(precision, Precision) else Precision(precision, device)
        self.env, self.sum_keys, self.desc = env, set(sum_keys), desc
        self.skipped = 0   # fp16 steps the scaler skipped (inf/NaN gradients)

    def __call__(self, step: int, micro_fn: Callable[[int, int], tuple[torch.Tensor, dict]]):
        env = self.env or get_env()
        prec, A = self.precision, self.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, stats_sum, finite, bad = 0.0, {}, True, "non-finite"
        for k in range(A):
            with prec.autocast():
                loss, stats = micro_fn(step, k)
            lv = float(loss.detach())
            if finite and not math.isfinite(lv):
                finite, bad = False, lv
            if finite:
                prec.scaler.scale(loss / A).backward()
            loss_sum += lv
            for name, v in stats.items():
                stats_sum[name] = stats_sum.get(name, 0.0) + float(v)
        keys = sorted(stats_sum)
        vec = [loss_sum, 0.0 if finite else 1.0] + [stats_sum[k] for k in keys]
        if env.distributed:
            t = torch.tensor(vec, dtype=torch.float64, device=collective_device())
            dist.all_reduce(t)
            vec = t.tolist()
        if vec[1] > 0:
            where = f" (on {int(vec[1])} of {env.world_size} processes)" if env.distributed else ""
            raise FloatingPointError(f"{self.desc}: loss became {bad} at step {step}{where}")
        W = env.world_size
        average_gradients(self.params, env)
        if prec.scaler.is_enabled():
            prec.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if prec.scaler.is_enabled():
            scale = prec.scaler.get_scale()
            prec.scaler.step(self.optimizer)
            prec.scaler.update()
            self.skipped += int(prec.scaler.get_scale() < scale)
        else:
            self.optimizer.step()
        stats = {k: (v if k in self.sum_keys else v / (A * W)) for k, v in zip(keys, vec[2:])}
        return torch.tensor(vec[0] / (A * W)), stats


# ----------------------------------------------------------------------------- throughput
#: dense bf16 tensor-core peaks (FLOP/s) by device-name substring; MFU is reported against these.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "L40": 181e12, "A10G": 125e12, "A10": 125e12, "L4": 121e12, "4090": 165e12, "3090": 71e12,
             "V100": 125e12, "T4": 65e12}


def peak_flops(device) -> float | None:
    """Peak dense bf16 FLOP/s of ``device`` (``MINILISTEN_PEAK_TFLOPS`` overrides); None on CPU or an
    unknown GPU."""
    if os.environ.get("MINILISTEN_PEAK_TFLOPS"):
        return float(os.environ["MINILISTEN_PEAK_TFLOPS"]) * 1e12
    d = torch.device(device)
    if d.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(d)
    for key, v in PEAK_BF16.items():   # longest keys first among overlaps: H200 before H100 etc. by order
        if key in name:
            return v
    return None


def lm_flops_per_token(n_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of a decoder LM: ``6 N + 12 L d T`` (the PaLM
    appendix estimate: matmuls over the ``N`` non-embedding weights + attention scores). With LoRA
    (frozen weights) the weight-gradient third is not computed: this then overestimates by ~1/3."""
    return 6.0 * n_params + 12.0 * n_layer * d_model * seq_len


class Throughput:
    """Step timing and rates of a training run (on every rank; report rank 0's).

    ``step_end(samples, tokens)`` after each optimizer step with the *global* counts of that step.
    The first ``warmup`` steps (compilation, allocator warm-up) are excluded from the rates.
    :meth:`summary`: ``steps``, ``step_s`` (median), ``samples_per_s``, ``tokens_per_s`` (when tokens
    were given), ``peak_mem_gb`` (CUDA: max allocated over ranks; CPU: peak RSS of this process),
    ``mfu`` (with ``flops_per_token`` on a GPU of known peak, against dense bf16 peak x ranks)."""

    def __init__(self, device="cpu", env: DistEnv | None = None, warmup: int = 2,
                 flops_per_token: float | None = None, flops_per_sample: float | None = None):
        self.device = torch.device(device)
        self.env = env or get_env()
        self.warmup, self.fpt, self.fps = warmup, flops_per_token, flops_per_sample
        self.times: list[float] = []
        self.samples: list[float] = []
        self.tokens: list[float] = []
        self._t = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def start(self) -> None:
        """Mark the start of the timed region (called before the first step)."""
        self._sync()
        self._t = time.perf_counter()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step_end(self, samples: float, tokens: float = 0.0) -> float:
        """Record one step; returns its wall time in seconds."""
        self._sync()
        now = time.perf_counter()
        dt = now - (self._t if self._t is not None else now)
        self._t = now
        self.times.append(dt)
        self.samples.append(float(samples))
        self.tokens.append(float(tokens))
        return dt

    def peak_mem_gb(self) -> float:
        if self.device.type == "cuda":
            m = torch.tensor([float(torch.cuda.max_memory_allocated(self.device))], device=self.device)
            if self.env.distributed and dist.is_initialized():
                dist.all_reduce(m, op=dist.ReduceOp.MAX)
            return float(m) / 2 ** 30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux

    def summary(self) -> dict:
        w = self.warmup if len(self.times) > self.warmup else 0
        ts, ss, ks = self.times[w:], self.samples[w:], self.tokens[w:]
        out = {"steps": len(self.times), "timed_steps": len(ts), "processes": self.env.world_size,
               "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"}
        if ts and sum(ts) > 0:
            tot = sum(ts)
            out.update(step_s=float(np.median(ts)), samples_per_s=sum(ss) / tot)
            if sum(ks):
                out["tokens_per_s"] = sum(ks) / tot
            peak = peak_flops(self.device)
            flops = (self.fpt * sum(ks) if self.fpt and sum(ks) else 0.0) + (self.fps * sum(ss) if self.fps else 0.0)
            if peak and flops:
                out["mfu"] = flops / tot / (peak * self.env.world_size)
        out["peak_mem_gb"] = self.peak_mem_gb()
        out["peak_mem_kind"] = "cuda max allocated" if self.device.type == "cuda" else "process peak RSS"
        return out

    def postfix(self) -> dict:
        """Short progress-bar fields: the last step's ``s/it`` and samples/s."""
        if not self.times or self.times[-1] <= 0:
            return {}
        return {"step_s": f"{self.times[-1]:.3f}", "sps": f"{self.samples[-1] / self.times[-1]:.0f}"}

    @staticmethod
    def format(s: dict) -> str:
        """One line for the log: ``throughput: 2 procs, 0.123 s/step, 260 samples/s, ...``."""
        parts = [f"{s['processes']} process{'es' if s['processes'] > 1 else ''} ({s['device']})"]
        if "step_s" in s:
            parts += [f"{s['step_s']:.4f} s/step", f"{s['samples_per_s']:.1f} samples/s"]
        if "tokens_per_s" in s:
            parts.append(f"{s['tokens_per_s']:.0f} tokens/s")
        parts.append(f"peak mem {s['peak_mem_gb']:.2f} GB ({s['peak_mem_kind']})")
        if "mfu" in s:
            parts.append(f"MFU {100 * s['mfu']:.1f}% of bf16 peak (estimate)")
        return "throughput: " + ", ".join(parts)
