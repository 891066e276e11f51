"""``python -m minilisten data``: write the synthetic corpus in our format, or summarise a dataset."""
from __future__ import annotations

import argparse
import time

import numpy as np


def summary(splits: dict, fps: float) -> str:
    """A few lines per split: segments, 8-s windows, identities, words, frames."""
    lines = []
    for name, segs in splits.items():
        n_frames = sum(s.T for s in segs)
        n_win = sum(s.T // int(round(8 * fps)) for s in segs)
        ids = sorted({s.listener_id for s in segs})
        n_words = sum(len(s.words) for s in segs)
        lines.append(f"  {name:<5} {len(segs):5d} segments  {n_win:6d} windows of 8 s  "
                     f"{n_frames / fps / 60:7.1f} min  {len(ids):3d} listener ids  {n_words:7d} words")
    allm = np.concatenate([s.listener_motion for segs in splits.values() for s in segs])
    lines.append(f"  listener motion: mean |x| {np.abs(allm).mean():.3f}, std exp {allm[:, :50].std(0).mean():.3f}, "
                 f"std pose {allm[:, 50:].std(0).mean():.3f}")
    return "\n".join(lines)


def add_data_args(p: argparse.ArgumentParser):
    """The dataset options shared by ``train-vq``, ``evaluate-vq`` and ``train-lm``: ``--data DIR``
    or the synthetic corpus's ``--corpus-seed/--identities/--segments/--seconds``."""
    g = p.add_argument_group("data (synthetic corpus unless --data)")
    g.add_argument("--data", metavar="DIR", help="dataset directory (read with minilisten.data.formats.load_dataset)")
    g.add_argument("--corpus-seed", type=int, default=0)
    g.add_argument("--identities", type=int, default=8)
    g.add_argument("--segments", type=int, default=300)
    g.add_argument("--seconds", type=float, default=64.0)
    return g


def load_data(a: argparse.Namespace):
    """``(dataset, description)`` for the options of :func:`add_data_args`; the dataset has
    ``.train/.val/.test`` and, for the synthetic corpus and our format, ``.n_sa``."""
    if a.data:
        from .formats import load_dataset
        return load_dataset(a.data), f"dataset {a.data}"
    from .synthetic import synthetic_corpus
    ds = synthetic_corpus(seed=a.corpus_seed, n_identities=a.identities, n_segments=a.segments, seconds=a.seconds)
    return ds, f"synthetic corpus (seed {a.corpus_seed}, {a.identities} identities)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minilisten data", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true", help="generate the embedded synthetic corpus (default)")
    src.add_argument("--data", metavar="DIR", help="read a dataset directory (ours, LM-listener or Learning2Listen)")
    p.add_argument("--out", metavar="DIR", help="write the corpus/dataset here in minilisten's format")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--identities", type=int, default=8)
    p.add_argument("--segments", type=int, default=300)
    p.add_argument("--seconds", type=float, default=64.0)
    p.add_argument("--fps", type=float, default=30.0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.data:
        from .formats import load_dataset
        ds = load_dataset(a.data)
        splits = {"train": ds.train, "val": ds.val, "test": ds.test}
        fps, what = next(s for v in splits.values() for s in v).fps, f"dataset {a.data}"
    else:
        from .synthetic import synthetic_corpus
        ds = synthetic_corpus(seed=a.seed, n_identities=a.identities, n_segments=a.segments, seconds=a.seconds, fps=a.fps)
        splits, fps, what = ds.splits, ds.fps, f"synthetic corpus (seed {a.seed})"
    print(f"{what}: loaded in {time.perf_counter() - t0:.1f} s")
    print(summary(splits, fps))
    if a.out:
        from .formats import load_corpus, save_corpus
        save_corpus(ds, a.out)
        back = load_corpus(a.out)
        same = all(np.array_equal(x.listener_motion, y.listener_motion)
                   for k in splits for x, y in zip(splits[k], getattr(back, k)))
        print(f"wrote {a.out} (read back: {'identical' if same else 'DIFFERENT'})")
        if not same:
            return 1
    return 0
