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
    """The dataset options shared by every command that reads data: ``--data DIR``, or a synthetic
    corpus ``--corpus NAME`` (a variant of :data:`~minilisten.data.synthetic.CORPORA`) with
    ``--corpus-seed`` and optional size overrides ``--identities/--segments/--seconds``."""
    from .synthetic import CORPORA
    g = p.add_argument_group("data (a synthetic corpus unless --data)")
    g.add_argument("--data", metavar="DIR", help="dataset directory: ours, LM-listener or Learning2Listen layout")
    g.add_argument("--corpus", choices=list(CORPORA), default="default",
                   help="synthetic corpus variant (README 'Synthetic corpora'; default: %(default)s)")
    g.add_argument("--corpus-seed", type=int, default=0, help="seed of the synthetic corpus (default: %(default)s)")
    g.add_argument("--identities", type=int, help="override the variant's number of listener identities")
    g.add_argument("--segments", type=int, help="override the variant's number of segments")
    g.add_argument("--seconds", type=float, help="override the variant's segment length in seconds")
    return g


def corpus_overrides(a: argparse.Namespace) -> dict:
    return {k: v for k, v in (("n_identities", a.identities), ("n_segments", a.segments), ("seconds", a.seconds))
            if v is not None}


def load_data(a: argparse.Namespace):
    """``(dataset, description)`` for the options of :func:`add_data_args`; the dataset has
    ``.train/.val/.test`` and ``.n_sa`` (None when unknown)."""
    if a.data:
        from .formats import load_dataset
        return load_dataset(a.data), f"dataset {a.data}"
    from .synthetic import named_corpus
    over = corpus_overrides(a)
    ds = named_corpus(a.corpus, seed=a.corpus_seed, **over)
    extra = "".join(f", {k}={v}" for k, v in over.items())
    return ds, f"synthetic corpus {a.corpus!r} (seed {a.corpus_seed}{extra})"


def main(argv: list[str] | None = None) -> int:
    from .synthetic import CORPORA, CORPUS_DOC
    p = argparse.ArgumentParser(prog="python -m minilisten data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="synthetic corpora (--corpus):\n" + "\n".join(
                                    f"  {k:<12} {CORPUS_DOC[k]}" for k in CORPORA))
    add_data_args(p)
    p.add_argument("--out", metavar="DIR", help="write the corpus/dataset here in minilisten's format")
    p.add_argument("--layout", choices=("minilisten", "lm-listener"), default="minilisten",
                   help="layout written by --out (lm-listener keeps what its layout holds: words, motion, beta)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    ds, what = load_data(a)
    splits = {"train": ds.train, "val": ds.val, "test": ds.test}
    fps = next(s for v in splits.values() for s in v).fps
    print(f"{what}: loaded in {time.perf_counter() - t0:.1f} s")
    print(summary(splits, fps))
    if a.out and a.layout == "lm-listener":
        from .export import save_lm_listener
        save_lm_listener(ds, a.out)
        print(f"wrote {a.out} in LM-listener's layout")
    elif a.out:
        from .formats import load_corpus, save_corpus
        save_corpus(ds, a.out)
        back = load_corpus(a.out)
        same = all(np.array_equal(x.listener_motion, y.listener_motion)
                   for k in splits for x, y in zip(splits[k], getattr(back, k)))
        print(f"wrote {a.out} (read back: {'identical' if same else 'DIFFERENT'})")
        if not same:
            return 1
    return 0
