"""Training of the ARIG-style continuous listener (``minilisten.arig``): ``python -m minilisten train-arig``.

Data: random ``crop``-frame windows of the training segments, each treated as a fresh start (the
``window`` pad positions of the reference motion and the first speaker frame, as inference
begins a clip); the reference is the window's first listener frame for a fraction
``p_ref_first`` of the windows, else the training mean (identity from beta only), so both
``arig_generate(reference=...)`` modes are in distribution. Loss: the per-frame diffusion (or
regression) loss + ``w_state`` x the state cross-entropy (:func:`minilisten.arig.state_labels`).
Validation: the teacher-forced loss and state accuracy on fixed validation windows, with the
majority-class rate of the validation states beside it. Which inputs the model uses (SA, emotion,
words, beta) is what every train/val segment has.

The loop is :class:`minilisten.training.TrainLoop`: progress bar, atomic checkpoint sets
(model + optimizer + step), ``--resume`` continues bit for bit (batches and noise are functions
of ``(seed, step)``). Options: one per field of :class:`~minilisten.arig.ARIGConfig` (model) and
:class:`ARIGTrainConfig`, derived from the dataclasses; ``--paper`` starts from the appendix's
sizes (``ARIGConfig.paper()``).

CLI::

    python -m minilisten train-arig --out runs/arig                       # synthetic corpus, CPU size
    python -m minilisten train-arig --out runs/arig --steps 800 --resume  # continue to step 800
    python -m minilisten train-arig --data DIR --out runs/arig --test-clips 64   # + Table 1 metrics
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from .arig import ARIG, HEADS, IBUS, IGNORE, STATES, ARIGConfig, arig_generate, collate, frame_inputs
from .cli_config import ArgumentParser
from .data.cli import add_data_args, load_data
from .data.coverage import available_modalities, resolve_n_sa
from .data.segment import Segment
from .data.windows import motion_stats
from .training import TrainLoop, step_decay


@dataclass
class ARIGTrainConfig:
    steps: int = 400
    batch_size: int = 8
    crop: int = 64               # frames per training window (each a fresh start)
    lr: float = 1e-3
    warmup: int = 30             # linear warm-up steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    p_ref_first: float = 0.5     # fraction of windows whose reference motion is their first listener frame
    eval_every: int = 100
    val_windows: int = 32        # fixed validation windows (0 = all)
    save_every: int = 0          # 0 = at the end (and at validations)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "crop"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if not 0 <= self.p_ref_first <= 1:
            raise ValueError(f"p_ref_first: expected a fraction in [0, 1], got {self.p_ref_first!r}")


def data_config(segments: list[Segment], n_sa: int | None = None) -> dict:
    """The :data:`ARIGConfig.DATA_FIELDS` for these segments: the inputs every one of them has."""
    if not segments:
        raise ValueError("segments: expected at least one training segment, got 0")
    mods = available_modalities(segments)
    fps = {s.fps for s in segments}
    if len(fps) != 1:
        raise ValueError(f"fps: expected one frame rate in the data, got {sorted(fps)}")
    return dict(n_sa=(resolve_n_sa(None, segments) if n_sa is None else int(n_sa)) if "SA" in mods else 0,
                use_emotion="emo" in mods, use_words="W" in mods,
                use_beta=all(s.listener_beta is not None for s in segments),
                fps=float(fps.pop()), sa_rate=float(segments[0].sa_rate))


def _batch(inputs: list[dict], segments: list[Segment], items, crop: int, p_first: float, rng, device):
    ws, refs = [], []
    for i, s0 in items:
        w = {k: (v if k == "beta" else v[s0:s0 + crop]) for k, v in inputs[i].items()}
        ws.append(w)
        refs.append(w["lis"][0] if rng.random() < p_first else None)
    b = {k: v.to(device) for k, v in collate(ws).items()}
    return b, refs


def _ref_tensor(model: ARIG, refs, device) -> torch.Tensor:
    mean = model.lis_mean.cpu().numpy()
    return torch.as_tensor(np.stack([mean if r is None else r for r in refs]), device=device)


def _windows(segments: list[Segment], crop: int, stride: int) -> list[tuple[int, int]]:
    items = [(i, s0) for i, s in enumerate(segments) for s0 in range(0, s.T - crop + 1, stride)]
    if not items:
        raise ValueError(f"crop: no segment has {crop} frames (longest: {max((s.T for s in segments), default=0)})")
    return items


@torch.no_grad()
def evaluate_arig_loss(model: ARIG, inputs: list[dict], items, crop: int, device="cpu", seed: int = 0) -> dict:
    """Teacher-forced validation: motion loss, state CE / accuracy, majority-class rate (mean reference)."""
    was = model.training
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    tot: dict[str, float] = {}
    labels = []
    for k in range(0, len(items), 16):
        b, refs = _batch(inputs, None, items[k:k + 16], crop, 0.0, np.random.default_rng(0), device)
        _, st = model.loss(b, _ref_tensor(model, refs, device), generator=g)
        n = len(refs)
        for key, v in st.items():
            tot[key] = tot.get(key, 0.0) + v * n
        labels.append(b["state"].reshape(-1).cpu().numpy())
    model.train(was)
    n = len(items)
    out = {k: v / n for k, v in tot.items()}
    lab = np.concatenate(labels)
    lab = lab[lab != IGNORE]
    out["state_majority"] = float(np.bincount(lab, minlength=len(STATES)).max() / lab.size) if lab.size else float("nan")
    out["loss"] = out["motion"] + model.config.w_state * out["state"]
    return out


def train_arig(train_segments: list[Segment], val_segments: list[Segment], model_config: ARIGConfig | dict | None = None,
               config: ARIGTrainConfig | None = None, out_dir=None, resume: bool = False, n_sa: int | None = None,
               log=print, **overrides) -> ARIG:
    """Train an :class:`~minilisten.arig.ARIG` (a fresh one sized by ``model_config``; its data
    fields come from the segments) with ``config`` (+ ``overrides`` of its fields). With
    ``out_dir`` the run is saved there (atomic sets); ``resume=True`` continues it (the saved model
    and training configuration; only ``steps`` may grow). Returns the model in eval mode with
    ``train_log`` (validation history)."""
    tc = ARIGTrainConfig(**{**(asdict(config) if config is not None else {}), **overrides})
    if resume:
        if out_dir is None:
            raise ValueError("resume: needs out_dir (the directory to resume from)")
        model = ARIG.from_pretrained(out_dir)
        from pathlib import Path

        from .checkpoint import read_json
        saved = read_json(Path(out_dir) / "train_state.json", "train state").get("info", {}).get("config")
        if isinstance(saved, dict):   # the saved run's configuration; only steps/progress/device from now
            tc = ARIGTrainConfig(**{**saved, "steps": tc.steps, "progress": tc.progress, "device": tc.device})
    else:
        mc = model_config if isinstance(model_config, ARIGConfig) else ARIGConfig(**(model_config or {}))
        mc = ARIGConfig(**{**asdict(mc), **data_config(train_segments + val_segments, n_sa)})
        torch.manual_seed(tc.seed)
        model = ARIG(mc)
        lm, ls = motion_stats(train_segments, "listener")
        sm, ss = motion_stats(train_segments, "speaker")
        model.set_motion_stats(lm, ls, sm, ss)
    mc, dev = model.config, tc.device
    model.to(dev).train()
    inputs = [frame_inputs(s, mc) for s in train_segments]
    items = _windows(train_segments, tc.crop, 1)
    val_inputs = [frame_inputs(s, mc) for s in val_segments]
    val_items = _windows(val_segments, tc.crop, tc.crop) if val_segments else []
    if tc.val_windows and len(val_items) > tc.val_windows:
        pick = np.linspace(0, len(val_items) - 1, tc.val_windows).round().astype(int)
        val_items = [val_items[i] for i in pick]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.99), weight_decay=tc.weight_decay)

    def validate(step):
        if not val_items:
            return None
        res = evaluate_arig_loss(model, val_inputs, val_items, tc.crop, dev, tc.seed)
        if log:
            log(f"[val step {step}] motion {res['motion']:.4f} state CE {res['state']:.4f} acc {res['state_acc']:.3f} "
                f"(majority {res['state_majority']:.3f})")
        return res

    def step_fn(step):
        rng = np.random.default_rng([tc.seed, step])   # batch, references and noise: functions of (seed, step)
        g = torch.Generator(device=dev).manual_seed(tc.seed * 1_000_003 + step)
        b, refs = _batch(inputs, train_segments, [items[k] for k in rng.integers(0, len(items), tc.batch_size)],
                         tc.crop, tc.p_ref_first, rng, dev)
        loss, st = model.loss(b, _ref_tensor(model, refs, dev), generator=g)
        return loss, st

    loop = TrainLoop(model, opt, steps=tc.steps, schedule=step_decay(tc.lr, warmup=tc.warmup), out_dir=out_dir,
                     eval_every=tc.eval_every, save_every=tc.save_every, save_at_eval=not tc.save_every,
                     validate=validate, save_model=model.save_pretrained, extra_state=lambda: {"config": asdict(tc)},
                     grad_clip=tc.grad_clip, params=params, desc=f"train-arig ({mc.head}, ibu {mc.ibu})",
                     progress=tc.progress, postfix={"motion": ".3f", "state": ".3f"})
    if resume:
        loop.resume()
    t0 = time.time()
    model.train_log = loop.run(step_fn)
    model.train_seconds = time.time() - t0
    return model.eval()


# ----------------------------------------------------------------------------- evaluation
def evaluate_arig(model: ARIG, train_segments: list[Segment], test_segments: list[Segment], max_clips: int = 0,
                  steps: int | None = None, seed: int = 0, reference: str = "mean") -> dict:
    """Table 1 metrics (``minilisten.demo.score``: L2, FD, P-FD, Variation, Diversity, L2 Affect when
    the data has valence) of ARIG samples on LM-listener's evaluation clips of ``test_segments``."""
    from .data.windows import test_clips
    from .metrics import ValenceRegressor, score
    clips = test_clips(test_segments, max_clips)
    if not clips:
        raise ValueError("test_segments: expected segments of >= 16 frames to evaluate, got none")
    valence = None
    if all(s.valence is not None for s in train_segments + clips):
        valence = ValenceRegressor().fit([s.listener_motion for s in train_segments], [s.valence for s in train_segments])
    t0 = time.perf_counter()
    preds = arig_generate(model, clips, steps=steps, seed=seed, reference=reference)
    res = score(preds, clips, valence, seed)
    res["generate_seconds"] = round(time.perf_counter() - t0, 2)
    return res


# ----------------------------------------------------------------------------- CLI
_SKIP_TRAIN = ("progress",)
_CHOICES = {"head": HEADS, "ibu": IBUS}


def _add_fields(g, cls, skip, defaults: dict | None = None):
    """One ``--field-name`` option per field of dataclass ``cls`` (type from the default; bools as
    ``--x/--no-x``); default None = the dataclass's (or ``--paper``'s) value."""
    names = []
    for f in fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default)
        opt = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            g.add_argument(opt, action=argparse.BooleanOptionalAction, default=None, help=f"(default: {default})")
        elif f.name in _CHOICES:
            g.add_argument(opt, choices=_CHOICES[f.name], default=None, help=f"(default: {default})")
        else:
            g.add_argument(opt, type=type(default), default=None, metavar=type(default).__name__.upper(),
                           help=f"(default: {default})")
        names.append(f.name)
    return names


def _parser():
    p = ArgumentParser(prog="python -m minilisten train-arig", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("CLI::")[1])
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory (model + train state)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out (its model and options; "
                   "only --steps may grow)")
    p.add_argument("--paper", action="store_true", help="start from the appendix's sizes (ARIGConfig.paper())")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--test-clips", type=int, default=0, metavar="N",
                   help="after training, Table 1 metrics on N evaluation clips of the test split (0 = skip)")
    p.add_argument("--sample-steps-eval", type=int, default=None, metavar="S", help="Euler steps for --test-clips")
    add_data_args(p)
    model_names = _add_fields(p.add_argument_group("model (ARIGConfig fields)"), ARIGConfig, ARIGConfig.DATA_FIELDS)
    train_names = _add_fields(p.add_argument_group("optimisation (ARIGTrainConfig fields)"), ARIGTrainConfig, _SKIP_TRAIN)
    return p, model_names, train_names


def main(argv: list[str] | None = None) -> int:
    p, model_names, train_names = _parser()
    a = p.parse_args(argv)
    model_kw = {n: getattr(a, n) for n in model_names if getattr(a, n) is not None}
    train_kw = {n: getattr(a, n) for n in train_names if getattr(a, n) is not None}
    if a.resume and (model_kw or a.paper):
        raise ValueError(f"--resume continues the saved model; drop the model options "
                         f"{', '.join('--' + k.replace('_', '-') for k in model_kw) or '--paper'}")
    ds, what = load_data(a)
    from .data.coverage import with_val_split
    train, val, note = with_val_split(ds, seed=0)
    if note:
        print(f"{what}: {note}")
    mc = ARIGConfig.paper(**model_kw) if a.paper else ARIGConfig(**model_kw)
    tc = ARIGTrainConfig(**train_kw, progress=not a.no_progress)
    t0 = time.time()
    model = train_arig(train, val, mc, tc, out_dir=a.out, resume=a.resume, n_sa=getattr(ds, "n_sa", None))
    c = model.config
    print(f"{what}: inputs " + ", ".join(k for k, on in (("speaker motion", True), ("SA", c.n_sa > 0),
                                                         ("emotion", c.use_emotion), ("words", c.use_words),
                                                         ("beta", c.use_beta)) if on))
    last = model.train_log[-1] if model.train_log else {}
    summary = {"out": a.out, "val_motion": last.get("motion"), "val_state_acc": last.get("state_acc"),
               "val_state_majority": last.get("state_majority"), "seconds": round(time.time() - t0, 1)}
    if a.test_clips:
        summary["test"] = evaluate_arig(model, train, list(ds.test), a.test_clips, a.sample_steps_eval, tc.seed)
    print(json.dumps(summary, default=float))
    return 0
