"""The main job's command lines: ``python -m minilisten demo`` (the whole pipeline of
:mod:`minilisten.pipeline` on a synthetic corpus or ``--data DIR``, reported as paper Tables 1/3/4/5
with plots by :mod:`minilisten.report`) and ``python -m minilisten evaluate`` (saved checkpoints on
any dataset)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_text
from .cli_config import ArgumentParser
from .pipeline import DemoConfig, generate_motion, identity_swap, run_pipeline, score, test_clips  # noqa: F401
from .report import markdown_table, metric_columns, save_plots, write_demo_report


def run_demo(cfg: DemoConfig, out_dir: str | Path = "runs/demo", progress: bool = True) -> dict:
    """Run the whole pipeline into ``out_dir``: checkpoints, ``tables.md``, ``results.json`` and
    plots (one test clip's trajectories; one response decoded with two identities) and that clip as
    ``clip.mp4`` (``cfg.video``; needs imageio-ffmpeg, else skipped with one line). Returns the
    ``results.json`` content."""
    from .report import demo_report
    res = run_pipeline(cfg, out_dir, progress)
    out = res.out
    clips, ours = res.clips, res.ours
    k = int(np.argmax([np.var(c.listener_motion[:, :50], 0).sum() for c in clips]))
    series = {"GT": clips[k].listener_motion, "Ours": res.preds[res.models[ours]][k]}
    if "Naive" in res.rows and res.rows["Naive"] != ours:
        series["LM-listener"] = res.preds[res.models[res.rows["Naive"]]][k]
    plots = save_plots(out, clips[k], series, identity_swap(res, k))
    if cfg.video:   # the same clip as a video: speaker | Ours | LM-listener | ground truth
        from .render import render_demo_clip
        video = render_demo_clip(out, clips[k], {n: m for n, m in series.items() if n != "GT"}, progress=progress,
                                 ssaa=cfg.video_ssaa)
        plots += [str(video), str(video.with_suffix(".png"))] if video is not None else []
    text = write_demo_report(res, out, plots)
    print("\n" + text, flush=True)
    print(f"\nwrote {out / 'tables.md'}, {out / 'results.json'}" + "".join(f", {p}" for p in plots), flush=True)
    return demo_report(res, plots)


def main(argv: list[str] | None = None) -> int:
    from .cli_config import add_dataclass_args, dataclass_kwargs
    from .data.cli import add_data_args, data_config
    from .lm import DEFAULT_ARCHS
    from .pipeline import QUICK
    p = ArgumentParser(prog="python -m minilisten demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized run (~3 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="training seeds and the synthetic corpus's seed (default: 0)")
    p.add_argument("--no-progress", action="store_true")
    add_data_args(p, skip=("corpus_seed",))
    g = p.add_argument_group("run (DemoConfig fields; default: the full run's)")
    names = add_dataclass_args(g, DemoConfig, skip=("seed", "data", "corpus", "n_identities", "n_segments", "seconds"),
                               alt_defaults={"--quick": QUICK}, choices={"lm_arch": list(DEFAULT_ARCHS)},
                               help={"table3": "also train W+SA and W+emo LMs (paper Table 3)",
                                     "video": "render one test clip to clip.mp4"})
    a = p.parse_args(argv)
    d = data_config(a, corpus_seed=a.seed)
    over = dict(dataclass_kwargs(a, names), seed=a.seed, data=d.data, corpus=d.corpus, **d.overrides())
    cfg = DemoConfig.quick(**over) if a.quick else DemoConfig(**over)
    run_demo(cfg, a.out, progress=not a.no_progress)
    return 0


# ----------------------------------------------------------------------------- evaluate
def main_evaluate(argv: list[str] | None = None) -> int:
    from .data.cli import add_data_args, load_data
    p = ArgumentParser(prog="python -m minilisten evaluate",
                                description="Evaluate saved VQ-VAE + LM checkpoints (and/or an ARIG-style model) on "
                                            "a dataset's test split (Table 1 metrics, with the Random and NN "
                                            "baselines for reference).")
    p.add_argument("--vq", help="VQ-VAE checkpoint directory (with --lm)")
    p.add_argument("--lm", help="ListenerLM checkpoint directory (with --vq)")
    p.add_argument("--arig", metavar="DIR", help="an ARIG-style continuous listener (train-arig --out DIR)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines and the diversity pairs")
    p.add_argument("--max-clips", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", help="write results JSON here")
    add_data_args(p)
    a = p.parse_args(argv)
    if bool(a.vq) != bool(a.lm) or not (a.vq or a.arig):
        raise ValueError(f"--vq/--lm/--arig: expected --vq DIR --lm DIR, --arig DIR or all three, got "
                         f"{' '.join(f'--{k}' for k in ('vq', 'lm', 'arig') if getattr(a, k)) or 'none'}")
    from .baselines import NNFacialMotion, RandomListener, predict_all
    from .data.coverage import Coverage
    from .lm import ListenerLM
    from .metrics import ValenceRegressor
    from .vqvae import VQVAE

    ds, what = load_data(a)
    segs = getattr(ds, a.split)
    if not segs:
        raise ValueError(f"--split {a.split}: {what} has no segments in that split")
    cov = Coverage.of({"train": ds.train, a.split: segs})
    vq = lm = None
    if a.vq:
        vq, lm = VQVAE.from_pretrained(a.vq).eval(), ListenerLM.from_pretrained(a.lm).eval()
    lacking = [m for m in lm.modalities if m not in cov.modalities] if lm is not None else []
    if lacking:
        raise ValueError(f"--lm {a.lm}: the LM needs speaker modalities {'+'.join(lm.modalities)}, {what} has "
                         f"{'+'.join(cov.modalities) or 'none'} (missing {', '.join(lacking)})")
    if vq is not None and vq.needs_beta and not cov.has_beta:
        raise ValueError(f"--vq {a.vq}: this VQ-VAE (dec_norm={vq.config.dec_norm!r}) decodes with the listener's shape "
                         f"beta (100,), {what} has none; use a naive VQ-VAE")
    print(f"{what}: " + cov.describe())
    clips = test_clips(segs, a.max_clips)
    if not clips:
        raise ValueError(f"--split {a.split}: expected segments of >= 16 frames to evaluate, got none")
    valence = ValenceRegressor().fit([s.listener_motion for s in ds.train], [s.valence for s in ds.train]) \
        if cov.has_valence else None
    nn_window = max(c.T for c in clips)
    preds = {"Random": predict_all(RandomListener(seed=a.seed).fit(ds.train), clips),
             "NN facial motion": predict_all(NNFacialMotion(window=nn_window, seed=a.seed).fit(ds.train), clips)}
    if lm is not None:
        preds["model"] = generate_motion(lm, vq, clips, a.batch)[1]
    if a.arig:
        from .arig import ARIG, arig_generate
        from .pipeline import ARIG_ROW
        preds[ARIG_ROW] = arig_generate(ARIG.from_pretrained(a.arig), clips, seed=a.seed)
    rows = {name: score(pr, clips, valence, a.seed) for name, pr in preds.items()}
    gt = rows["Random"]
    rows = {"GT": {"variation": gt["variation_gt"], "diversity": gt["diversity_gt"]}, **rows}
    cols = metric_columns(valence is not None)
    print(markdown_table(rows, cols, f"{len(clips)} clips of split {a.split}"))
    if valence is None:
        print("L2 Affect: left out, the data has no valence")
    if a.out:
        atomic_write_text(a.out, json.dumps(rows, indent=2, default=float))
    return 0
