"""Several processes for the trainers: torchrun + ``torch.distributed`` + ``DistributedDataParallel``. Every
rank draws the same global batch and keeps its :func:`rank_slice` (the sample order does not depend on the number
of processes); :class:`ScaledStep` is one optimizer step. Design and tests: docs/training.md."""
from __future__ import annotations

import datetime
import math
import os
import resource
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")


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


def env_from_os(environ=None) -> DistEnv:
    """``DistEnv`` from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (one process without them)."""
    environ = os.environ if environ is None else environ

    def read(name: str, default: int, least: int, below: int | None = None) -> int:
        raw = environ.get(name, str(default))
        try:
            v = int(raw)
        except ValueError:
            raise UserError(f"environment {name}: expected an integer, got {raw!r}") from None
        if v < least or (below is not None and v >= below):
            bound = f"0 <= {name} < WORLD_SIZE = {below}" if below is not None else f">= {least}"
            raise UserError(f"environment {name}: expected {bound}, got {v}")
        return v
    world = read("WORLD_SIZE", 1, 1)
    rank = read("RANK", 0, 0, world)
    return DistEnv(rank, world, read("LOCAL_RANK", rank, 0))


def get_env() -> DistEnv:
    """The current :class:`DistEnv`, read from the process group (one process when there is none)."""
    if not dist.is_initialized():
        return DistEnv()
    rank = dist.get_rank()
    return DistEnv(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)), dist.get_backend())


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes checkpoints and logs."""
    return get_env().is_main


def launch(device: str, fn: Callable[[DistEnv, str], int]) -> int:
    """``fn(env, this rank's device)`` in the process group torchrun asked for (nccl on CUDA, gloo on CPU; one
    process without torchrun); a torchrun worker then leaves with ``os._exit(code)`` (gloo may abort at
    finalization; docs/training.md)."""
    env, dev = env_from_os(), str(device)
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: expected a machine with CUDA, got none")
        if env.distributed:
            if env.local_rank >= torch.cuda.device_count():
                raise UserError(f"environment LOCAL_RANK: expected < the {torch.cuda.device_count()} visible GPUs, "
                                f"got {env.local_rank} (use --nproc_per_node <= the number of GPUs)")
            dev = f"cuda:{env.local_rank}"
            torch.cuda.set_device(env.local_rank)
    if env.distributed:
        if not dist.is_initialized():
            backend = "nccl" if dev.startswith("cuda") else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=1800))
        env = get_env()
    try:
        code = fn(env, dev)
    finally:
        if dist.is_initialized():
            dist.barrier()   # rank 0 hosts the store: nobody tears down while another rank still talks
            dist.destroy_process_group()
    if not env.distributed:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank_slice(global_batch: int, env: DistEnv | None = None, what: str = "--batch-size") -> slice:
    """This rank's rows ``[r B/W, (r+1) B/W)`` of a global batch of ``B`` (a multiple of ``W``)."""
    env = env or get_env()
    if global_batch % env.world_size:
        raise UserError(f"{what}: expected a multiple of the number of processes ({env.world_size}), "
                        f"got {global_batch}")
    b = global_batch // env.world_size
    return slice(env.rank * b, (env.rank + 1) * b)


def shard_bounds(n: int, env: DistEnv | None = None) -> tuple[int, int]:
    """Contiguous shard ``[lo, hi)`` of ``n`` items for this rank (sharded evaluation)."""
    env = env or get_env()
    return n * env.rank // env.world_size, n * (env.rank + 1) // env.world_size


def count_weights(counts: list[int], env: DistEnv | None = None) -> list[float]:
    """Weights ``w_k = W A counts[k] / total`` making ``mean over ranks of sum_k w_k loss_k / A`` the
    mean over all targets of the global batch (``counts[k]``: targets of this rank's micro-batch k)."""
    env = env or get_env()
    total = all_reduce_sums({"n": sum(counts)}, env)["n"]
    return [env.world_size * len(counts) * float(x) / total if total > 0 else 0.0 for x in counts]


def all_reduce_sums(values: dict[str, float], env: DistEnv | None = None) -> dict[str, float]:
    """``{name: number}`` summed over ranks (in float64, on the GPU for nccl)."""
    env = env or get_env()
    if not env.distributed:
        return dict(values)
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def autocast(precision: str, device) -> object:
    """The forward context of ``--precision``: nothing for fp32, autocast to bf16 / fp16 otherwise."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class _Micro(torch.nn.Module):
    """The model's parameters under DDP; ``forward`` runs the trainer's micro-batch function."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, step: int, k: int):
        return fn(step, k)


class ScaledStep:
    """One optimizer step of ``grad_accum`` micro-batches ``micro_fn(step, k) -> (this rank's mean loss, stats)``
    on every rank, gradients averaged by DDP; returns loss and stats averaged over micro-batches and ranks
    (``sum_keys`` summed); a non-finite loss on any rank raises FloatingPointError on all of them."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, precision: str = "fp32",
                 device="cpu", grad_accum: int = 1, grad_clip: float = 0.0,
                 sum_keys=("tokens", "count", "correct", "samples"), desc: str = "train"):
        if not (isinstance(grad_accum, int) and not isinstance(grad_accum, bool) and grad_accum >= 1):
            raise UserError(f"--grad-accum: expected a positive int, got {grad_accum!r}")
        self.optimizer, self.grad_accum, self.grad_clip = optimizer, grad_accum, grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        autocast(precision, device)   # checks the name
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=(precision == "fp16"))
        self.env, self.sum_keys, self.desc = get_env(), set(sum_keys), desc
        self.ddp = None
        if self.env.distributed:   # rank 0's weights and buffers at init; the codebook syncs itself
            self.ddp = DistributedDataParallel(_Micro(model), find_unused_parameters=True, forward_sync_buffers=False)
        self.skipped = 0   # fp16 steps the scaler skipped (inf/NaN gradients)

    def __call__(self, step: int, micro_fn: Callable[[int, int], tuple[torch.Tensor, dict]]):
        env, scaler, A = self.env, self.scaler, self.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        losses, stats_sum = [], Counter()
        for k in range(A):
            sync = self.ddp is None or k == A - 1
            with (nullcontext() if sync else self.ddp.no_sync()), autocast(self.precision, self.device):
                loss, stats = micro_fn(step, k) if self.ddp is None else self.ddp(micro_fn, step, k)
            scaler.scale(loss / A).backward()   # always: every rank takes part in DDP's all-reduce
            losses.append(float(loss.detach()))
            stats_sum.update({name: float(v) for name, v in stats.items()})
        bad = next((v for v in losses if not math.isfinite(v)), None)
        tot = all_reduce_sums({"_loss": sum(losses), "_bad": float(bad is not None), **stats_sum}, env)
        n_bad, loss_tot = tot.pop("_bad"), tot.pop("_loss")
        if n_bad > 0:
            where = f" (on {int(n_bad)} of {env.world_size} processes)" if env.distributed else ""
            raise FloatingPointError(f"{self.desc}: loss became {bad if bad is not None else 'non-finite'} "
                                     f"at step {step}{where}")
        scaler.unscale_(self.optimizer)   # no-ops unless fp16
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        scale = scaler.get_scale()
        scaler.step(self.optimizer)
        scaler.update()
        self.skipped += int(scaler.get_scale() < scale)
        W = env.world_size
        return torch.tensor(loss_tot / (A * W)), {k: (v if k in self.sum_keys else v / (A * W)) for k, v in tot.items()}


#: dense bf16 tensor-core peaks (FLOP/s) by device-name substring (GH200 and A10G match H200 and A10; L40S before
#: L40); MFU is against these, or ``MINILISTEN_PEAK_TFLOPS``
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L40": 181e12,
             "A10": 125e12, "L4": 121e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


class Throughput:
    """Step times and rates: ``start()`` before a timed region, ``step_end(samples, tokens)`` after each
    step (global counts); :meth:`summary` leaves out the first ``warmup`` steps (compilation, allocator)."""

    def __init__(self, device="cpu", env: DistEnv | None = None, warmup: int = 2,
                 flops_per_token: float | None = None):
        self.device, self.env = torch.device(device), env or get_env()
        self.warmup, self.fpt = warmup, flops_per_token
        self.steps: list[tuple[float, float, float]] = []   # (seconds, samples, tokens)
        self._t = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        self._t = self._now()

    def step_end(self, samples: float, tokens: float = 0.0) -> None:
        now = self._now()
        self.steps.append((now - self._t, float(samples), float(tokens)))
        self._t = now

    def summary(self) -> dict:
        """``steps``, ``timed_steps``, ``step_s`` (median), ``samples_per_s``, ``tokens_per_s``, ``mfu``,
        ``peak_mem_gb`` (CUDA: max allocated over ranks; CPU: this process's peak RSS)."""
        timed = self.steps[self.warmup:] if len(self.steps) > self.warmup else self.steps
        out = {"steps": len(self.steps), "timed_steps": len(timed), "processes": self.env.world_size,
               "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"}
        secs, samples, tokens = (sum(x) for x in zip(*timed)) if timed else (0.0, 0.0, 0.0)
        if secs > 0:
            out.update(step_s=float(np.median([t[0] for t in timed])), samples_per_s=samples / secs)
            if tokens:
                out["tokens_per_s"] = tokens / secs
            peak = os.environ.get("MINILISTEN_PEAK_TFLOPS")
            peak = float(peak) * 1e12 if peak else next((v for k, v in PEAK_BF16.items() if k in out["device"]), None)
            if peak and self.fpt and tokens:
                out["mfu"] = self.fpt * tokens / secs / (peak * self.env.world_size)
        if self.device.type == "cuda":
            m = torch.tensor([float(torch.cuda.max_memory_allocated(self.device))], device=self.device)
            if self.env.distributed:
                dist.all_reduce(m, op=dist.ReduceOp.MAX)
            out["peak_mem_gb"] = float(m) / 2 ** 30
        else:
            out["peak_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux
        return out

    @staticmethod
    def format(s: dict) -> str:
        """One log line: ``throughput: 2 processes (cpu), 0.1230 s/step, 260.0 samples/s, ...``."""
        kind = "process RSS" if s["device"] == "cpu" else "max allocated"
        parts = [f"{s['processes']} process{'es' if s['processes'] > 1 else ''} ({s['device']})"]
        for key, fmt in (("step_s", "{:.4f} s/step"), ("samples_per_s", "{:.1f} samples/s"),
                         ("tokens_per_s", "{:.0f} tokens/s"), ("peak_mem_gb", "peak mem {:.2f} GB (" + kind + ")"),
                         ("mfu", "MFU {:.1%} of bf16 peak (estimate)")):
            if key in s:
                parts.append(fmt.format(s[key]))
        return "throughput: " + ", ".join(parts)
