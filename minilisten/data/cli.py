"""Which data a command reads (:class:`DataConfig`: a dataset directory, or a synthetic corpus variant, seed and
sizes), its options (``--data/--corpus/--corpus-seed/--identities/--segments/--seconds``) and
``python -m minilisten data``: write the synthetic corpus in our format, or summarise a dataset."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, fields

import numpy as np

from ..cli_config import ArgumentParser, add_dataclass_args, dataclass_kwargs


@dataclass(frozen=True)
class DataConfig:
    """Which data a command reads: a dataset directory, or a synthetic corpus variant + seed + sizes."""
    data: str | None = None             # dataset directory: ours, LM-listener or Learning2Listen layout
    corpus: str = "default"             # synthetic corpus variant (docs/data.md)
    corpus_seed: int = 0                # seed of the synthetic corpus
    n_identities: int | None = None     # override the variant's number of listener identities
    n_segments: int | None = None       # override the variant's number of segments
    seconds: float | None = None        # override the variant's segment length in seconds

    def overrides(self) -> dict:
        """The corpus size overrides that are set (keywords of ``named_corpus``)."""
        return {k: getattr(self, k) for k in ("n_identities", "n_segments", "seconds") if getattr(self, k) is not None}

    def describe(self) -> str:
        """``"dataset DIR"`` or ``"synthetic corpus 'NAME' (seed S, k=v...)"``."""
        if self.data:
            return f"dataset {self.data}"
        extra = "".join(f", {k}={v}" for k, v in self.overrides().items())
        return f"synthetic corpus {self.corpus!r} (seed {self.corpus_seed}{extra})"


def add_data_args(p: argparse.ArgumentParser, skip=()) -> argparse._ArgumentGroup:
    """The dataset options of every command that reads data, one per :class:`DataConfig` field but ``skip``
    (e.g. ``corpus_seed`` when the command's own ``--seed`` seeds the corpus). Returns the group."""
    from .synthetic import CORPORA
    g = p.add_argument_group("data (a synthetic corpus unless --data)")
    flags = {"data": "--data", "n_identities": "--identities", "n_segments": "--segments", "seconds": "--seconds"}
    add_dataclass_args(g, DataConfig, skip=skip, flags=flags, choices={"corpus": list(CORPORA)},
                       defaults={"data": "a synthetic corpus"}, metavars={"data": "DIR", "corpus": "NAME"})
    return g


def data_config(a: argparse.Namespace, **fixed) -> DataConfig:
    """The :class:`DataConfig` of parsed :func:`add_data_args` options (``fixed``: values of skipped fields)."""
    return DataConfig(**{**dataclass_kwargs(a, [f.name for f in fields(DataConfig)]), **fixed})


def load_data(a: argparse.Namespace | DataConfig, progress: bool = True, **fixed):
    """``(dataset, description)`` of a :class:`DataConfig` or parsed :func:`add_data_args` options; the
    dataset has ``.train/.val/.test`` (lists of Segment) and ``.n_sa`` (None when unknown)."""
    c = a if isinstance(a, DataConfig) else data_config(a, **fixed)
    if c.data:
        from .formats import load_dataset
        return load_dataset(c.data, progress=progress), c.describe()
    from .synthetic import named_corpus
    return named_corpus(c.corpus, seed=c.corpus_seed, **c.overrides()), c.describe()


def summary(splits: dict, fps: float) -> str:
    """A line per split (segments, 8-s windows, minutes, identities, words) and one on listener motion."""
    lines = [f"  {name:<5} {len(segs):5d} segments  {sum(s.T // int(round(8 * fps)) for s in segs):6d} windows of 8 s  "
             f"{sum(s.T for s in segs) / fps / 60:7.1f} min  {len({s.listener_id for s in segs}):3d} listener ids  "
             f"{sum(len(s.words) for s in segs):7d} words" for name, segs in splits.items()]
    allm = np.concatenate([s.listener_motion for segs in splits.values() for s in segs])
    lines.append(f"  listener motion: mean |x| {np.abs(allm).mean():.3f}, std exp {allm[:, :50].std(0).mean():.3f}, "
                 f"std pose {allm[:, 50:].std(0).mean():.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .synthetic import CORPORA
    epilog = "synthetic corpora (--corpus):\n" + "\n".join(f"  {k:<12} {doc}" for k, (_, doc) in CORPORA.items())
    p = ArgumentParser(prog="python -m minilisten data", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    add_data_args(p)
    p.add_argument("--out", metavar="DIR", help="write the corpus/dataset here in minilisten's format")
    p.add_argument("--layout", choices=("minilisten", "lm-listener"), default="minilisten",
                   help="layout written by --out (lm-listener keeps what its layout holds: words, motion, beta)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    ds, what = load_data(a)
    splits = ds.splits
    print(f"{what}: loaded in {time.perf_counter() - t0:.1f} s")
    print(summary(splits, next(s for v in splits.values() for s in v).fps))   # the first segment's fps
    if a.out and a.layout == "lm-listener":
        from .formats import save_lm_listener
        save_lm_listener(ds, a.out)
        print(f"wrote {a.out} in LM-listener's layout")
    elif a.out:
        from .formats import load_corpus, save_corpus
        save_corpus(ds, a.out)
        back = load_corpus(a.out)
        same = all(np.array_equal(x.listener_motion, y.listener_motion)
                   for k in splits for x, y in zip(splits[k], getattr(back, k)))
        print(f"wrote {a.out} (read back: {'identical' if same else 'DIFFERENT'})")
        return 0 if same else 1
    return 0
