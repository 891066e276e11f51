"""The one training loop of every trainer (``train_vq``, ``train_lm``).

A trainer builds its model and optimizer, then hands the loop a *step function* and callbacks::

    loop = TrainLoop(model, opt, schedule=step_decay(1e-3, warmup=30), steps=300, out_dir=out,
                     validate=lambda step: {...} or None, save_model=model.save_pretrained)
    if resume:
        info = loop.resume()          # optimizer, scheduler, RNG, step, history; refuses fewer steps
    loop.run(step_fn)                 # step_fn(step) -> (loss (scalar tensor), stats {name: float})

Per step ``s`` (0-based) the loop calls ``step_fn(s)`` (forward: sample a batch, compute the
loss; it may update buffers, e.g. the EMA codebook), checks the loss is finite, then
``zero_grad`` -> ``backward`` -> optional ``clip_grad_norm_`` -> ``optimizer.step`` ->
``scheduler.step``. The learning rate of step ``s`` is ``schedule(s)``, applied through
:class:`FunctionLR` (a ``torch.optim.lr_scheduler.LRScheduler``), so any torch scheduler can take
its place. After step ``s`` (``done = s + 1``): validation every ``eval_every`` steps, a save every
``save_every`` steps (and at validations when ``save_at_eval``), both also at the end; the final
validation is skipped when nothing was trained and a validation is already in the history.

Saving is one atomic set (:func:`minilisten.checkpoint.checkpoint_transaction`): the model
(``save_model(stage_dir)``) + ``train_state.*``: the optimizer, and in ``info`` the step, the
scheduler state, the torch CPU RNG state, the state of ``numpy_rng`` when given, the validation
``history`` and the trainer's own ``extra_state()``. :meth:`TrainLoop.resume` restores all of
them, so a resumed run equals an uninterrupted one bit for bit (``tests/test_training.py``,
``tests/test_checkpoint.py``: SIGKILL at any point, then resume).

Several processes, mixed precision, gradient accumulation (:mod:`minilisten.distributed`): the
step is a :class:`~minilisten.distributed.ScaledStep` (``precision`` fp32/bf16/fp16 autocast with a
``GradScaler`` for fp16, ``grad_accum`` micro-batches, gradients averaged over the ranks of a
``torchrun`` launch, the logged loss and stats global). With ``grad_accum > 1`` the step function
is called as ``step_fn(step, k)`` for micro-batch ``k``; it is the step function's job to return
*this rank's* part of micro-batch ``k`` of the step's global batch (``distributed.rank_slice``).
Only rank 0 saves and shows a progress bar; every rank validates (sharded evaluation reduces over
ranks). Throughput (samples/s, tokens/s when the stats carry ``tokens``, step time, peak memory,
MFU on a known GPU with ``flops_per_token``) is measured over the training steps (validation and
saving excluded), logged at the end and kept in ``loop.throughput`` (and ``throughput.json`` in
``out_dir``). ``hooks`` (``on_step_end(step, loss, stats)``) observe every step; override
:meth:`TrainLoop.train_step` for other step logic.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import distributed as D
from .checkpoint import atomic_write_text, checkpoint_transaction, load_train_state, save_train_state

__all__ = ["FunctionLR", "step_decay", "TrainLoop", "renamed_kwargs", "append_jsonl"]


class FunctionLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr = schedule(step)`` for every parameter group (an absolute value, not a factor of the
    initial lr: the numbers equal a hand-written ``g["lr"] = schedule(step)`` exactly).
    ``state_dict()`` is ``{"last_epoch": step}`` (JSON-friendly; the schedule is code)."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Callable[[int], float]):
        self.schedule = schedule
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [float(self.schedule(self.last_epoch)) for _ in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": int(self.last_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.set_step(int(state["last_epoch"]))

    def set_step(self, step: int) -> None:
        """Jump to ``step``: the groups get ``schedule(step)`` (used on resume)."""
        self.last_epoch = int(step)
        for g, lr in zip(self.optimizer.param_groups, self.get_lr()):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


def step_decay(learning_rate: float, warmup: int = 0, decay_step: int | None = None,
               final_learning_rate: float | None = None) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps (``learning_rate * (step + 1) / warmup``), then
    ``learning_rate``, then ``final_learning_rate`` from ``decay_step`` on (unchanged when
    ``decay_step`` or ``final_learning_rate`` is None). The paper's VQ-VAE and LM schedules."""
    for name, v in (("learning_rate", learning_rate), ("final_learning_rate", final_learning_rate)):
        if v is not None and not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
            raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")

    def schedule(step: int) -> float:
        if step < warmup:
            return learning_rate * (step + 1) / warmup
        if decay_step is not None and step >= decay_step and final_learning_rate is not None:
            return final_learning_rate
        return learning_rate
    return schedule


def renamed_kwargs(kwargs: dict, renames: dict[str, str], where: str) -> dict:
    """``kwargs`` with old names (``renames``: old -> new) mapped to the new ones; both given is an error.
    Keeps old config.json / train_state / keyword callers working after a rename."""
    out = dict(kwargs)
    for old, new in renames.items():
        if old in out:
            if new in out:
                raise ValueError(f"{where}: got both {old!r} (old name) and {new!r}; pass only {new!r}")
            out[new] = out.pop(old)
    return out


class TrainLoop:
    """Resume, schedule, progress bar, validation and atomic saving around a step function
    (module docstring). ``steps``: the total (the run stops after step ``steps - 1``).

    ``validate(step) -> dict | None``: validation results (appended to ``history`` with ``step``)
    or None (nothing to validate). ``save_model(dir)``: writes the model files of a set;
    ``extra_state() -> dict``: more JSON for ``train_state.json``'s ``info``; ``after_save(step)``:
    runs after a set is committed. ``validate_at_end=False``: no final validation. ``numpy_rng``:
    a generator whose state is saved and restored.
    ``postfix``: ``{name: format}`` of the stats shown on the bar (their EMA with ``ema``).
    ``precision``, ``grad_accum``, ``device``: the step (module docstring); ``samples_per_step``:
    the global batch size (for samples/s); ``flops_per_token``: training FLOPs per token (LM MFU);
    ``log``: where the final throughput line goes (None: nowhere).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, steps: int,
                 schedule: Callable[[int], float], out_dir=None, eval_every: int = 0, save_every: int = 0,
                 save_at_eval: bool = False, validate: Callable[[int], dict | None] | None = None,
                 save_model: Callable | None = None, extra_state: Callable[[], dict] | None = None,
                 after_save: Callable[[int], None] | None = None, numpy_rng: np.random.Generator | None = None,
                 grad_clip: float = 0.0, params=None, desc: str = "train", progress: bool = True,
                 postfix: dict[str, str] | None = None, postfix_every: int = 1, ema: float = 0.9,
                 validate_at_end: bool = True, hooks=(), precision: str = "fp32", grad_accum: int = 1,
                 device="cpu", samples_per_step: int = 0, flops_per_token: float | None = None,
                 log: Callable[[str], None] | None = None):
        for name, v in (("steps", steps), ("eval_every", eval_every), ("save_every", save_every)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= (1 if name == "steps" else 0)):
                raise ValueError(f"{name}: expected an int >= {1 if name == 'steps' else 0}, got {v!r}")
        self.model, self.optimizer, self.steps = model, optimizer, steps
        self.scheduler = FunctionLR(optimizer, schedule)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.eval_every, self.save_every, self.save_at_eval = eval_every, save_every, save_at_eval
        self._validate, self.save_model = validate, save_model
        self.extra_state, self.after_save = extra_state, after_save
        self.numpy_rng, self.grad_clip, self.desc, self.progress = numpy_rng, grad_clip, desc, progress
        self.params = list(params) if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        self.postfix, self.postfix_every, self.ema_decay = postfix or {}, postfix_every, ema
        self.validate_at_end = validate_at_end
        self.hooks = list(hooks)
        self.env = D.get_env()
        self.progress = progress and self.env.is_main
        self.grad_accum, self.device, self.samples_per_step = grad_accum, device, samples_per_step
        self.flops_per_token, self.log = flops_per_token, log
        self.scaled = D.ScaledStep(optimizer, self.params, precision=precision, device=device, grad_accum=grad_accum,
                                   grad_clip=grad_clip, env=self.env, desc=desc)
        self.throughput: dict | None = None
        self.meter: D.Throughput | None = None
        self.start = 0
        self.history: list[dict] = []
        self.ema: dict | None = None

    # ------------------------------------------------------------------ state
    def resume(self, check: Callable[[dict], None] | None = None) -> dict:
        """Restore the optimizer, scheduler, RNG states, step and history saved in ``out_dir``;
        returns the saved ``info`` (with the trainer's extra state). ``check(info)`` runs first
        (the trainer's own refusals, e.g. another stage). Refuses ``steps`` below the saved step
        (ValueError naming ``--steps``)."""
        if self.out_dir is None:
            raise ValueError("resume: needs out_dir (the directory to resume from)")
        info = load_train_state(self.out_dir, self.optimizer)
        if check is not None:
            check(info)
        start = int(info["step"])
        if self.steps < start:
            raise ValueError(f"--steps ({self.out_dir}): expected >= the saved step {start} to resume, "
                             f"got {self.steps}")
        self.start = start
        self.history = list(info.get("history", []))
        self.scheduler.set_step(int(info.get("scheduler", {}).get("last_epoch", start)))
        if "torch_rng" in info:
            torch.set_rng_state(torch.tensor(info["torch_rng"], dtype=torch.uint8))
        if self.numpy_rng is not None:
            if "numpy_rng" not in info:
                raise ValueError(f"train state ({self.out_dir / 'train_state.json'}): expected 'numpy_rng' "
                                 "(the data sampler's state), got none")
            self.numpy_rng.bit_generator.state = info["numpy_rng"]
        if "precision" in info:
            self.scaled.precision.load_state_dict(info["precision"])
        return info

    def state(self, step: int) -> dict:
        """The ``info`` saved with the optimizer at ``step``."""
        info = {"step": step, "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state().tolist(),
                "history": self.history}
        if self.numpy_rng is not None:
            info["numpy_rng"] = self.numpy_rng.bit_generator.state
        if self.scaled.precision.scaler.is_enabled():
            info["precision"] = self.scaled.precision.state_dict()
        if self.extra_state is not None:
            info.update(self.extra_state())
        return info

    def save(self, step: int) -> None:
        """Model + train state as one atomic set (nothing without ``out_dir``; only rank 0 writes)."""
        if self.out_dir is None or not self.env.is_main:
            return
        with checkpoint_transaction(self.out_dir, step) as stage:
            if self.save_model is not None:
                self.save_model(stage)
            save_train_state(stage, self.optimizer, self.state(step))
        if self.after_save is not None:
            self.after_save(step)

    def validate(self, step: int) -> dict | None:
        if self._validate is None:
            return None
        res = self._validate(step)
        self.model.train()
        if res is not None:
            res = {**res, "step": step}
            self.history.append(res)
        return res

    # ------------------------------------------------------------------ the loop
    def train_step(self, step: int, step_fn) -> tuple[torch.Tensor, dict]:
        """One optimisation step (:class:`~minilisten.distributed.ScaledStep`): zero grads, forward
        (``step_fn``) + backward per micro-batch, finite check, gradient all-reduce, clip, update."""
        fn = step_fn if self.grad_accum > 1 else (lambda s, k: step_fn(s))
        loss, stats = self.scaled(step, fn)
        self.scheduler.step()
        return loss, stats

    def _show(self, bar, step: int, stats: dict) -> None:
        cur = {k: float(v) for k, v in stats.items()}
        self.ema = cur if self.ema is None else {k: self.ema_decay * self.ema[k] + (1 - self.ema_decay) * cur[k]
                                                 for k in cur}
        if self.progress and self.postfix and step % self.postfix_every == 0:
            bar.set_postfix({k: format(self.ema[k], f) for k, f in self.postfix.items()}, refresh=False)

    def run(self, step_fn: Callable[[int], tuple[torch.Tensor, dict]]) -> list[dict]:
        """Train from ``self.start`` to ``steps``; returns the validation history."""
        from tqdm.auto import tqdm
        self.model.train()
        bar = tqdm(range(self.start, self.steps), initial=self.start, total=self.steps, disable=not self.progress,
                   desc=self.desc, dynamic_ncols=True)
        self.meter = meter = D.Throughput(self.device, self.env, flops_per_token=self.flops_per_token)
        meter.start()
        for step in bar:
            loss, stats = self.train_step(step, step_fn)
            meter.step_end(self.samples_per_step, stats.get("tokens", 0.0))
            self._show(bar, step, stats)
            for h in self.hooks:
                h(step, loss, stats)
            done = step + 1
            if done < self.steps:
                evaluated = bool(self.eval_every) and done % self.eval_every == 0
                if evaluated:
                    self.validate(done)
                if (self.save_every and done % self.save_every == 0) or (evaluated and self.save_at_eval):
                    self.save(done)
                meter.start()   # validation and saving are not training time
        bar.close()
        if self.start < self.steps:
            self.throughput = meter.summary()
            if self.env.is_main:
                if self.log is not None:
                    self.log(D.Throughput.format(self.throughput))
                if self.out_dir is not None:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(self.out_dir / "throughput.json", json.dumps(self.throughput, indent=1))
        if self.validate_at_end and (self.start < self.steps or not self.history):
            self.validate(self.steps)
        self.save(self.steps)
        return self.history


def append_jsonl(path, record: dict) -> None:
    """Append one JSON line to ``path`` (the whole file rewritten atomically)."""
    from .checkpoint import atomic_write_text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    atomic_write_text(path, old + json.dumps(record) + "\n")
