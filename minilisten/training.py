"""The one training loop of every trainer: a :class:`LoopConfig` subclass + the model + ``step_fn(step, k) ->
(loss, stats)`` (this rank's part of micro-batch ``k``); the loop owns AdamW, the schedule, validation,
``log.jsonl``, throughput and atomic checkpoints that resume bit for bit (docs/training.md)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import distributed as D
from .checkpoint import atomic_write_text, checkpoint_transaction, load_train_state, save_train_state
from .cli_config import add_dataclass_args, field_docs
from .data.coverage import fit_window
from .errors import UserError


def step_decay(learning_rate: float, warmup: int = 0, decay_step: int | None = None,
               final_learning_rate: float | None = None) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, ``learning_rate``, then ``final_learning_rate`` from ``decay_step``."""
    for name, v in (("learning_rate", learning_rate), ("final_learning_rate", final_learning_rate)):
        if v is not None and not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
            raise UserError(f"{name}: expected a finite number >= 0, got {v!r}")
    check_ints({"warmup": warmup})
    drop = decay_step is not None and final_learning_rate is not None

    def schedule(step: int) -> float:
        if step < warmup:
            return learning_rate * (step + 1) / warmup
        return final_learning_rate if drop and step >= decay_step else learning_rate
    return schedule


def check_ints(values: dict, least: int = 0) -> None:
    """Each ``{name: value}`` an int >= ``least`` (UserError naming the field)."""
    what = "a positive int" if least == 1 else f"an int >= {least}"
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise UserError(f"{name}: expected {what}, got {v!r}")


@dataclass
class LoopConfig:
    """What the loop reads; each trainer's config subclasses it (its own defaults and fields)."""
    steps: int = 300                  # optimisation steps
    batch_size: int = 8               # samples per step (the global batch of all processes)
    learning_rate: float = 1e-3       # AdamW learning rate after warm-up
    warmup: int = 30                  # linear learning-rate warm-up steps
    decay_step: int | None = None     # step of the drop to final_learning_rate (None: no drop)
    final_learning_rate: float | None = None  # learning rate from decay_step on
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    weight_decay: float = 0.01        # AdamW weight decay
    grad_clip: float = 1.0            # gradient-norm clip (0: none)
    eval_every: int = 100             # validate every N steps (0: only at the end)
    save_every: int = 0               # save every N steps (0: at validations and at the end)
    seed: int = 0                     # seed of the data order, noise and initialisation
    device: str = "cpu"               # torch device
    precision: str = "fp32"           # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler)
    grad_accum: int = 1               # micro-batches per step
    progress: bool = True             # progress bar

    def __post_init__(self):
        check_ints({"steps": self.steps, "batch_size": self.batch_size, "--grad-accum": self.grad_accum}, 1)
        check_ints({"warmup": self.warmup, "eval_every": self.eval_every, "save_every": self.save_every})
        self.betas = tuple(self.betas)
        D.autocast(self.precision, "cpu")   # checks the name
        if self.batch_size % self.grad_accum:
            raise UserError(f"--batch-size: expected a multiple of --grad-accum {self.grad_accum}, "
                            f"got {self.batch_size}")
        D.rank_slice(self.micro, what=f"--batch-size / --grad-accum ({self.batch_size} / {self.grad_accum})")

    @property
    def micro(self) -> int:
        """Samples per micro-batch (all processes)."""
        return self.batch_size // self.grad_accum

    def local(self, drawn: np.ndarray, k: int) -> np.ndarray:
        """This rank's part of micro-batch ``k`` of the step's global draw ``drawn (batch_size,)``."""
        return drawn[k * self.micro:(k + 1) * self.micro][D.rank_slice(self.micro)]


def fitted(segments, want: int, r: int, what: str, log=None) -> int:
    """``data.coverage.fit_window``: ``want`` frames or the longest multiple of ``r`` the data allows, said once."""
    got = fit_window(segments, want, r)
    if got < want and log is not None and D.is_main():
        log(f"{what}: the longest segment holds {got} frames, not {want}: using {got}")
    return got


def data_fps(segments) -> float:
    """The one frame rate of ``segments``."""
    rates = sorted({float(s.fps) for s in segments})
    if len(rates) != 1:
        raise UserError(f"segments: expected one frame rate, got {rates}")
    return rates[0]


def windows(segments, length: int, stride: int, r: int = 1) -> list[tuple[int, int]]:
    """``(segment index, first frame)`` of every ``length``-frame window (a multiple of ``r``) at ``stride``."""
    if length % r:
        raise UserError(f"window: expected a multiple of r = {r} frames, got {length}")
    items = [(i, s0) for i, s in enumerate(segments) for s0 in range(0, s.T - length + 1, stride)]
    if not items:
        raise UserError(f"window: expected a segment of >= {length} frames, got the longest with "
                        f"{max((s.T for s in segments), default=0)}")
    return items


def resume_dir(out_dir) -> Path:
    """``out_dir`` as a Path, checked to be given (``resume=True`` needs it)."""
    if out_dir is None:
        raise UserError("resume: expected out_dir (the directory to resume from), got None")
    return Path(out_dir)


def merged(cls, config, **kw):
    """``cls`` (a :class:`LoopConfig` subclass) from ``config``'s fields (if any) with ``kw`` over them."""
    return cls(**{**(asdict(config) if config is not None else {}), **kw})


def loop_args(group, cls, **kw) -> list[str]:
    """``cli_config.add_dataclass_args`` for a :class:`LoopConfig` subclass (the base's help where it has none)."""
    return add_dataclass_args(group, cls, help={**field_docs(LoopConfig), **field_docs(cls)},
                              choices={"precision": D.PRECISIONS}, **kw)


def append_jsonl(path, record: dict) -> None:
    """Append one JSON line to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class TrainLoop:
    """Resume, schedule, progress bar, validation and atomic saving around a step function. ``validate(step)
    -> dict | None`` (appended to ``history`` and ``out_dir/log.jsonl``); ``save_model(dir)``: the model's files;
    ``numpy_rng``: a generator saved and restored; ``postfix``: ``{stat: format}`` of the bar (EMA: ``self.ema``)."""

    def __init__(self, model: torch.nn.Module, config: LoopConfig, *, out_dir=None,
                 validate: Callable[[int], dict | None] | None = None, save_model: Callable | None = None,
                 numpy_rng: np.random.Generator | None = None, desc: str = "train", postfix: dict | None = None,
                 flops_per_token: float | None = None, log=None):
        c = self.config = config
        self.model, self.steps, self.start, self.history = model, c.steps, 0, []
        params = [p for p in model.parameters() if p.requires_grad]
        # base lr 1.0: LambdaLR's lr = 1.0 * schedule(step), the schedule's value exactly
        self.optimizer = torch.optim.AdamW(params, lr=1.0, betas=c.betas, weight_decay=c.weight_decay)
        schedule = step_decay(c.learning_rate, c.warmup, c.decay_step, c.final_learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaled = D.ScaledStep(model, self.optimizer, precision=c.precision, device=c.device,
                                   grad_accum=c.grad_accum, grad_clip=c.grad_clip, desc=desc)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self._validate, self.save_model, self.numpy_rng = validate, save_model, numpy_rng
        self.desc, self.postfix, self.log, self.flops_per_token = desc, postfix or {}, log, flops_per_token
        self.main = D.is_main()
        self.ema: dict | None = None

    def resume(self) -> dict:
        """Restore the optimizer, schedule, RNG states, step and history saved in ``out_dir``; returns ``info``."""
        info = load_train_state(resume_dir(self.out_dir), self.optimizer)
        self.start = int(info["step"])
        if self.steps < self.start:
            raise UserError(f"--steps ({self.out_dir}): expected >= the saved step {self.start} to resume, "
                            f"got {self.steps}")
        self.history = list(info["history"])
        self.scheduler.last_epoch = self.start   # the saved optimizer holds schedule(start) already
        torch.set_rng_state(torch.tensor(info["torch_rng"], dtype=torch.uint8))
        if self.numpy_rng is not None:
            self.numpy_rng.bit_generator.state = info["numpy_rng"]
        if "scaler" in info:
            self.scaled.scaler.load_state_dict(info["scaler"])
        return info

    def save(self, step: int) -> None:
        """Model + optimizer + ``info`` (step, RNG states, history, config) as one atomic set (rank 0, out_dir)."""
        if self.out_dir is None or not self.main:
            return
        info = {"step": step, "torch_rng": torch.get_rng_state().tolist(), "history": self.history,
                "config": asdict(self.config)}
        if self.numpy_rng is not None:
            info["numpy_rng"] = self.numpy_rng.bit_generator.state
        if self.scaled.scaler.is_enabled():
            info["scaler"] = self.scaled.scaler.state_dict()
        with checkpoint_transaction(self.out_dir, step) as stage:
            if self.save_model is not None:
                self.save_model(stage)
            save_train_state(stage, self.optimizer, info)

    def validate(self, step: int) -> dict | None:
        res = None if self._validate is None else self._validate(step)
        self.model.train()
        if res is not None:
            res = {**res, "step": step}
            self.history.append(res)
            if self.out_dir is not None and self.main:
                append_jsonl(self.out_dir / "log.jsonl", res)
        return res

    def run(self, step_fn: Callable[[int, int], tuple[torch.Tensor, dict]]) -> list[dict]:
        """Train from ``self.start`` to ``steps``; returns the validation history."""
        from tqdm.auto import tqdm
        c = self.config
        self.model.train()
        show = c.progress and self.main
        bar = tqdm(range(self.start, self.steps), initial=self.start, total=self.steps, disable=not show,
                   desc=self.desc, dynamic_ncols=True)
        meter = D.Throughput(c.device, flops_per_token=self.flops_per_token)
        meter.start()
        for step in bar:
            _, stats = self.scaled(step, step_fn)
            self.scheduler.step()
            meter.step_end(c.batch_size, stats.get("tokens", 0.0))
            cur = {k: float(v) for k, v in stats.items()}
            self.ema = cur if self.ema is None else {k: 0.9 * self.ema[k] + 0.1 * cur[k] for k in cur}
            if show and self.postfix:
                bar.set_postfix({k: format(self.ema[k], f) for k, f in self.postfix.items()}, refresh=False)
            done = step + 1
            if done < self.steps:
                evaluated = bool(c.eval_every) and done % c.eval_every == 0
                if evaluated:
                    self.validate(done)
                if (c.save_every and done % c.save_every == 0) or (evaluated and not c.save_every):
                    self.save(done)
                meter.start()   # validation and saving are not training time
        bar.close()
        if self.start < self.steps:
            throughput = meter.summary()
            if self.main and self.log is not None:
                self.log(D.Throughput.format(throughput))
            if self.main and self.out_dir is not None:   # atomic_write_text makes the directory
                atomic_write_text(self.out_dir / "throughput.json", json.dumps(throughput, indent=1))
        if self.start < self.steps or not self.history:
            self.validate(self.steps)
        self.save(self.steps)
        return self.history
