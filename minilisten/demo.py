"""``python -m minilisten demo``: the whole pipeline (:mod:`minilisten.pipeline`) on a synthetic corpus or
``--data DIR``, reported as paper Tables 1/3/4/5 with plots (:mod:`minilisten.report`); and
``python -m minilisten evaluate``: saved checkpoints on any dataset."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text
from .cli_config import ArgumentParser, add_dataclass_args, dataclass_kwargs
from .data.cli import add_data_args, data_config, load_data
from .data.coverage import Coverage
from .data.windows import test_clips
from .errors import UserError
from .generate import Sampling, generate_motion
from .metrics import evaluate
from .pipeline import ARIG_ROW, QUICK, ROW_DIR, DemoConfig, baselines, identity_swap, run_pipeline
from .reactions import COLUMNS, TEMPERATURES
from .report import markdown_table, metric_columns, save_plots, write_demo_report


def run_demo(cfg: DemoConfig, out_dir: str | Path = "runs/demo", progress: bool = True) -> dict:
    """The whole pipeline into ``out_dir``: checkpoints, ``tables.md``, ``results.json``, plots and one test clip as
    ``clip.mp4`` (``cfg.video``; skipped with one line without imageio-ffmpeg). Returns ``results.json``'s content."""
    res = run_pipeline(cfg, out_dir, progress)
    clips = res.clips
    k = int(np.argmax([np.var(c.listener_motion[:, :50], 0).sum() for c in clips]))
    series = {"GT": clips[k].listener_motion, "Ours": res.preds[res.models[res.ours]][k]}
    if "Naive" in res.rows and res.rows["Naive"] != res.ours:
        series["LM-listener"] = res.preds[res.models[res.rows["Naive"]]][k]
    plots = save_plots(res.out, clips[k], series, identity_swap(res, k))
    if cfg.video:   # the same clip as a video: speaker | Ours | LM-listener | ground truth
        from .render import no_ffmpeg, render_segment
        if why := no_ffmpeg():   # the demo's other outputs do not need imageio-ffmpeg
            print(f"render: skipped {res.out / 'clip.mp4'}: {why}", flush=True)
        else:
            preds = {n: m for n, m in series.items() if n != "GT"}
            video = render_segment(clips[k], preds, res.out / "clip.mp4", progress=progress, still=clips[k].T // 2,
                                   ssaa=cfg.video_ssaa)
            plots += [str(video), str(video.with_suffix(".png"))]
    react = None
    if cfg.samples:   # evaluate --samples' REACT table on the demo's own splits and models (Ours, ARIG-style)
        from .arig import ARIG
        from .lm import ListenerLM
        lm = ListenerLM.from_pretrained(res.out / ROW_DIR[next(r for r, key in res.rows.items() if key == res.ours)])
        arig = ARIG.from_pretrained(res.out / "arig") if (res.out / "arig").is_dir() else None
        react = _react(res.data, "test", cfg.samples, cfg.seed, lm.eval(), res.vq[res.ours[1]],
                       [Sampling(t) for t in TEMPERATURES], arig, cfg.max_test_clips, cfg.decode_batch)
    text, report = write_demo_report(res, plots, react)
    print("\n" + text, flush=True)
    print(f"\nwrote {res.out / 'tables.md'}, {res.out / 'results.json'}" + "".join(f", {p}" for p in plots), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    from .lm import DEFAULT_ARCHS
    p = ArgumentParser(prog="python -m minilisten demo", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized run (~3 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="training seeds and the synthetic corpus's seed (default: 0)")
    p.add_argument("--no-progress", action="store_true")
    add_data_args(p, skip=("corpus_seed",))
    g = p.add_argument_group("run (DemoConfig fields; default: the full run's)")
    names = add_dataclass_args(g, DemoConfig, skip=("seed", "data"), alt_defaults={"--quick": QUICK},
                               choices={"lm_arch": list(DEFAULT_ARCHS)})
    a = p.parse_args(argv)
    torch.set_num_threads(1)   # measured: 1 thread per process beats 2 on a 2-core box under any load
    kw = dict(dataclass_kwargs(a, names), seed=a.seed, data=data_config(a, corpus_seed=a.seed))
    run_demo(DemoConfig.quick(**kw) if a.quick else DemoConfig(**kw), a.out, progress=not a.no_progress)
    return 0


def _react(ds, split: str, samples: int, seed: int, lm, vq, samplings: list, arig, limit: int,
           batch: int) -> tuple[dict, str]:
    """The REACT table's rows and title on ``split``; Ours' temperature (of ``samplings``) is chosen on the
    validation split."""
    from .reactions import choose_sampling, react_table
    sampling = samplings[0]
    if lm is not None and len(samplings) > 1:
        sampling, found = choose_sampling(ds, samplings, samples, lm, vq, seed, limit, batch)
        print(f"temperature {sampling.temperature:g} chosen on the validation split (FRDist " +
              ", ".join(f"{k.temperature:g}: {v:.2f}" for k, v in found.items()) + ")")
    return react_table(ds, split, samples, seed, lm, vq, sampling, arig, limit, batch)


def main_evaluate(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m minilisten evaluate", description="Evaluate saved VQ-VAE + LM checkpoints "
                       "(and/or an ARIG-style model) on a dataset's test split (Table 1 metrics, with the Random and "
                       "NN baselines for reference).")
    p.add_argument("--vq", help="VQ-VAE checkpoint directory (with --lm)")
    p.add_argument("--lm", help="ListenerLM checkpoint directory (with --vq)")
    p.add_argument("--arig", metavar="DIR", help="an ARIG-style continuous listener (train-arig --out DIR)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines and the diversity pairs")
    p.add_argument("--max-clips", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", help="write results JSON here")
    p.add_argument("--samples", type=int, default=0, help="S sampled reactions per clip: adds the REACT table")
    p.add_argument("--temperature", default=",".join(map(str, TEMPERATURES)), help="LR sampling temperature with "
                   "--samples; a comma list: the one of lowest FRDist on the validation split (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="LR sampling: nucleus mass (default: %(default)s)")
    add_data_args(p)
    a = p.parse_args(argv)
    if a.samples < 0:
        raise UserError(f"--samples: expected an int >= 0, got {a.samples}")
    try:   # checked before any data or model is loaded
        samplings = [Sampling(float(t), top_p=a.top_p) for t in a.temperature.split(",")]
    except ValueError as e:
        raise UserError(f"--temperature/--top-p: expected numbers > 0 (and top-p in (0, 1]), got "
                        f"{a.temperature!r}/{a.top_p!r} ({e})") from None
    if a.samples and any(s.greedy for s in samplings):
        raise UserError(f"--temperature: expected values > 0 with --samples (0 is greedy), got {a.temperature!r}")
    if bool(a.vq) != bool(a.lm) or not (a.vq or a.arig):
        raise UserError(f"--vq/--lm/--arig: expected --vq DIR --lm DIR, --arig DIR or all three, got "
                        f"{' '.join(f'--{k}' for k in ('vq', 'lm', 'arig') if getattr(a, k)) or 'none'}")
    ds, what = load_data(a)
    segs = getattr(ds, a.split)
    clips = test_clips(segs, a.max_clips)
    if not clips:
        raise UserError(f"--split {a.split}: expected segments of >= 16 frames to evaluate, got none of "
                        f"{len(segs)} segments in {what}")
    cov = Coverage.of({"train": ds.train, a.split: segs})
    preds = baselines(ds.train, clips, a.seed, speech=False)[0]
    lm = vq = arig = None
    if a.vq:
        from .lm import ListenerLM
        from .vqvae import VQVAE
        vq, lm = VQVAE.from_pretrained(a.vq).eval(), ListenerLM.from_pretrained(a.lm).eval()
        if lacking := [m for m in lm.modalities if m not in cov.modalities]:
            raise UserError(f"--lm {a.lm}: the LM needs speaker modalities {'+'.join(lm.modalities)}, {what} has "
                            f"{'+'.join(cov.modalities) or 'none'} (missing {', '.join(lacking)})")
        if vq.needs_beta and not cov.has_beta:
            raise UserError(f"--vq {a.vq}: this VQ-VAE (dec_norm={vq.config.dec_norm!r}) decodes with the listener's "
                            f"shape beta (100,), {what} has none; use a naive VQ-VAE")
        preds["model"] = generate_motion(lm, vq, clips, a.batch)[1]
    print(f"{what}: " + cov.describe())
    if a.arig:
        from .arig import ARIG, arig_generate
        arig = ARIG.from_pretrained(a.arig)
        preds[ARIG_ROW] = arig_generate(arig, clips, seed=a.seed)
    rows = evaluate(preds, clips, ds.train, a.seed)
    gt = rows["Random"]
    rows = {"GT": {"variation": gt["variation_gt"], "diversity": gt["diversity_gt"]}, **rows}
    print(markdown_table(rows, metric_columns("l2_affect" in gt), f"{len(clips)} clips of split {a.split}"))
    if "l2_affect" not in gt:
        print("L2 Affect: left out, the data has no valence")
    if a.samples:
        react, note = _react(ds, a.split, a.samples, a.seed, lm, vq, samplings, arig, a.max_clips, a.batch)
        print(markdown_table(react, COLUMNS, f"REACT metrics, split {a.split}: {note}"))
        rows["react"] = react
    if a.out:
        atomic_write_text(a.out, json.dumps(rows, indent=2, default=float))
    return 0
