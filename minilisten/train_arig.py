"""Training of the ARIG-style continuous listener (``minilisten.arig``): ``python -m minilisten train-arig``.

Data: random ``crop``-frame windows, each a fresh start, referenced to their first listener frame (fraction
``p_ref_first``) or the training mean. Loss: motion + ``w_state`` x state CE; validation: teacher-forced.

CLI::

    python -m minilisten train-arig --out runs/arig                       # synthetic corpus, CPU size
    python -m minilisten train-arig --out runs/arig --steps 800 --resume  # continue to step 800
    python -m minilisten train-arig --data DIR --out runs/arig --test-clips 64   # + Table 1 metrics
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .arig import ARIG, HEADS, IBUS, IGNORE, STATES, ARIGConfig, arig_generate, collate, frame_inputs
from .checkpoint import read_json
from .cli_config import ArgumentParser, add_dataclass_args, dataclass_kwargs
from .data.cli import add_data_args, load_data
from .data.coverage import available_modalities, resolve_n_sa, with_val_split
from .data.segment import Segment
from .data.windows import motion_stats, test_clips
from .errors import UserError
from .metrics import variation
from .training import LoopConfig, TrainLoop, data_fps, fitted, loop_args, merged, resume_dir, windows


@dataclass
class ARIGTrainConfig(LoopConfig):
    """How :func:`train_arig` trains (CPU defaults)."""
    steps: int = 400
    crop: int = 64                    # frames per training window (each a fresh start; fitted to the data)
    p_ref_first: float = 0.5          # fraction of windows whose reference motion is their first listener frame
    val_windows: int = 32             # fixed validation windows (0 = all)
    calibrate: bool = True            # at the end, set the model's sampling temperature on the validation split

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.p_ref_first <= 1:
            raise UserError(f"p_ref_first: expected a fraction in [0, 1], got {self.p_ref_first!r}")


def data_config(segments: list[Segment], n_sa: int | None = None) -> dict:
    """The :data:`ARIGConfig.DATA_FIELDS` for these segments: the inputs every one of them has."""
    if not segments:
        raise UserError("segments: expected at least one training segment, got 0")
    mods = available_modalities(segments)
    return dict(n_sa=(resolve_n_sa(None, segments) if n_sa is None else int(n_sa)) if "SA" in mods else 0,
                use_emotion="emo" in mods, use_words="W" in mods,
                use_beta=all(s.listener_beta is not None for s in segments),
                fps=data_fps(segments), sa_rate=float(segments[0].sa_rate))


def _batch(model: ARIG, inputs: list[dict], items, first: list[bool], crop: int, device):
    """Collated windows ``items`` and their reference motions (first listener frame, else the mean)."""
    ws = [{k: (v if k == "beta" else v[s0:s0 + crop]) for k, v in inputs[i].items()} for i, s0 in items]
    mean = model.lis_mean.cpu().numpy()
    ref = torch.as_tensor(np.stack([w["lis"][0] if f else mean for w, f in zip(ws, first)]), device=device)
    return {k: v.to(device) for k, v in collate(ws).items()}, ref


@torch.no_grad()
def evaluate_arig_loss(model: ARIG, inputs: list[dict], items, crop: int, device="cpu", seed: int = 0) -> dict:
    """Teacher-forced validation: motion loss, state CE / accuracy, majority-class rate (mean reference)."""
    was = model.training
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    tot, labels = Counter(), []
    for k in range(0, len(items), 16):
        part = items[k:k + 16]
        b, ref = _batch(model, inputs, part, [False] * len(part), crop, device)
        tot.update({key: v * len(part) for key, v in model.loss(b, ref, generator=g)[1].items()})
        labels.append(b["state"].reshape(-1).cpu().numpy())
    model.train(was)
    out = {k: v / len(items) for k, v in tot.items()}
    lab = np.concatenate(labels)
    lab = lab[lab != IGNORE]
    majority = np.bincount(lab, minlength=len(STATES)).max() / lab.size if lab.size else float("nan")
    out["state_majority"] = float(majority)
    out["loss"] = out["motion"] + model.config.w_state * out["state"]
    return out


TEMPERATURES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def calibrate_temperature(model: ARIG, val_segments: list[Segment], seed: int = 0, max_clips: int = 12) -> dict:
    """Free-running rollouts on the validation clips at each of :data:`TEMPERATURES`; sets ``config.temperature`` to
    the one whose Variation is closest to the data's (in ratio; too narrow and too wide samples count alike) and
    returns ``{"temperature": T, "variation_ratio": {T: ratio}}``. A diffusion head's spread at a fixed noise scale
    depends on how far training got (docs/arig.md); the test split is never used."""
    clips = test_clips(val_segments, max_clips)
    gt = np.mean([variation(c.listener_motion) for c in clips])
    ratios = {t: np.mean([variation(p) for p in arig_generate(model, clips, seed=seed, temperature=t)]) / gt
              for t in TEMPERATURES}
    best = min(TEMPERATURES, key=lambda t: abs(np.log(ratios[t])) if ratios[t] > 0 else np.inf)
    model.config = replace(model.config, temperature=best)
    return {"temperature": best, "variation_ratio": {str(t): round(float(r), 3) for t, r in ratios.items()}}


def train_arig(train_segments: list[Segment], val_segments: list[Segment],
               model_config: ARIGConfig | dict | None = None,
               config: ARIGTrainConfig | None = None, out_dir=None, resume: bool = False, n_sa: int | None = None,
               log=print, **overrides) -> ARIG:
    """Train an :class:`~minilisten.arig.ARIG` sized by ``model_config`` (data fields from the segments)
    with ``config`` + ``overrides``; ``resume=True`` continues the run in ``out_dir`` (its model and
    configuration; only ``steps`` may grow). Returns it in eval mode with ``train_log``."""
    tc = merged(ARIGTrainConfig, config, **overrides)
    if resume:
        model = ARIG.from_pretrained(resume_dir(out_dir))
        saved = read_json(Path(out_dir) / "train_state.json", "train state")["info"]["config"]
        tc = ARIGTrainConfig(**{**saved, "steps": tc.steps, "progress": tc.progress, "device": tc.device})
    else:
        mc = model_config if isinstance(model_config, ARIGConfig) else ARIGConfig(**(model_config or {}))
        mc = ARIGConfig(**{**asdict(mc), **data_config(train_segments + val_segments, n_sa)})
        torch.manual_seed(tc.seed)
        model = ARIG(mc)
        lo, hi = (f([f(s.listener_motion, 0) for s in train_segments], 0) for f in (np.min, np.max))
        model.set_motion_stats(*motion_stats(train_segments, "listener"), *motion_stats(train_segments, "speaker"),
                               lo, hi)
    mc, dev = model.config, tc.device
    model.to(dev).train()
    crop = fitted(train_segments, tc.crop, 1, "--crop", log)
    inputs = [frame_inputs(s, mc) for s in train_segments]
    items = windows(train_segments, crop, 1)
    val_inputs = [frame_inputs(s, mc) for s in val_segments]
    val_items = [(i, s0) for i, s in enumerate(val_segments) for s0 in range(0, s.T - crop + 1, crop)]
    if tc.val_windows and len(val_items) > tc.val_windows:
        pick = np.linspace(0, len(val_items) - 1, tc.val_windows).round().astype(int)
        val_items = [val_items[i] for i in pick]

    def validate(step):
        res = evaluate_arig_loss(model, val_inputs, val_items, crop, dev, tc.seed) if val_items else None
        if res and log:
            log(f"[val step {step}] motion {res['motion']:.4f} state CE {res['state']:.4f} acc {res['state_acc']:.3f} "
                f"(majority {res['state_majority']:.3f})")
        if res and step == tc.steps and tc.calibrate and mc.head == "diffusion" and test_clips(val_segments, 1):
            res.update(calibrate_temperature(model, val_segments, tc.seed))
            if log:
                log(f"[val step {step}] sampling temperature {res['temperature']:g}: rollout Variation / the data's "
                    + ", ".join(f"{t}: {r}" for t, r in res["variation_ratio"].items()))
        return res

    drawn = {}

    def step_fn(step, k):
        if k == 0:   # batch, references and noise: functions of (seed, step)
            rng = np.random.default_rng([tc.seed, step])
            ids = rng.integers(0, len(items), tc.batch_size)
            first = np.array([rng.random() < tc.p_ref_first for _ in ids])
            drawn.update(ids=ids, first=first, g=torch.Generator(device=dev).manual_seed(tc.seed * 1_000_003 + step))
        part = tc.local(np.arange(tc.batch_size), k)
        b, ref = _batch(model, inputs, [items[j] for j in drawn["ids"][part]], drawn["first"][part], crop, dev)
        return model.loss(b, ref, generator=drawn["g"])

    loop = TrainLoop(model, tc, out_dir=out_dir, validate=validate, save_model=model.save_pretrained,
                     desc=f"train-arig ({mc.head}, ibu {mc.ibu})", postfix={"motion": ".3f", "state": ".3f"})
    if resume:
        loop.resume()
    model.train_log = loop.run(step_fn)
    return model.eval()


def evaluate_arig(model: ARIG, train_segments: list[Segment], test_segments: list[Segment], max_clips: int = 0,
                  steps: int | None = None, seed: int = 0, reference: str = "mean") -> dict:
    """Table 1 metrics (``metrics.score``) of ARIG samples on LM-listener's evaluation clips of ``test_segments``."""
    from .metrics import evaluate
    clips = test_clips(test_segments, max_clips)
    if not clips:
        raise UserError("test_segments: expected segments of >= 16 frames to evaluate, got none")
    t0 = time.perf_counter()
    preds = arig_generate(model, clips, steps=steps, seed=seed, reference=reference)
    res = evaluate({"arig": preds}, clips, train_segments, seed)["arig"]
    res["generate_seconds"] = round(time.perf_counter() - t0, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m minilisten train-arig", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("CLI::")[1],
                       allow_abbrev=False)
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory (model + train state)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out (its model and options; "
                   "only --steps may grow)")
    p.add_argument("--paper", action="store_true", help="start from the appendix's sizes (ARIGConfig.paper())")
    p.add_argument("--test-clips", type=int, default=0, metavar="N",
                   help="after training, Table 1 metrics on N evaluation clips of the test split (0 = skip)")
    p.add_argument("--sample-steps-eval", type=int, default=None, metavar="S", help="Euler steps for --test-clips")
    add_data_args(p)
    model_names = add_dataclass_args(p.add_argument_group("model (ARIGConfig fields)"), ARIGConfig,
                                     skip=ARIGConfig.DATA_FIELDS, choices={"head": HEADS, "ibu": IBUS})
    train_names = loop_args(p.add_argument_group("optimisation (ARIGTrainConfig fields)"), ARIGTrainConfig,
                            skip=("precision", "grad_accum"))
    a = p.parse_args(argv)
    model_kw = dataclass_kwargs(a, model_names)
    if a.resume and (model_kw or a.paper):
        raise UserError(f"--resume continues the saved model; drop the model options "
                        f"{', '.join('--' + k.replace('_', '-') for k in model_kw) or '--paper'}")
    ds, what = load_data(a)
    train, val, note = with_val_split(ds, seed=0)
    if note:
        print(f"{what}: {note}")
    mc = ARIGConfig.paper(**model_kw) if a.paper else ARIGConfig(**model_kw)
    tc = ARIGTrainConfig(**dataclass_kwargs(a, train_names))
    t0 = time.time()
    model = train_arig(train, val, mc, tc, out_dir=a.out, resume=a.resume, n_sa=getattr(ds, "n_sa", None))
    c = model.config
    used = (("SA", c.n_sa > 0), ("emotion", c.use_emotion), ("words", c.use_words), ("beta", c.use_beta))
    print(f"{what}: inputs speaker motion" + "".join(f", {k}" for k, on in used if on))
    last = model.train_log[-1] if model.train_log else {}
    summary = {"out": a.out, **{f"val_{k}": last.get(k) for k in ("motion", "state_acc", "state_majority")},
               "seconds": round(time.time() - t0, 1)}
    if a.test_clips:
        summary["test"] = evaluate_arig(model, train, list(ds.test), a.test_clips, a.sample_steps_eval, tc.seed)
    print(json.dumps(summary, default=float))
    return 0
