"""Where a run's data comes from: a dataset directory, or a named synthetic corpus (the one home of
that choice; the CLIs' ``--data/--corpus/--corpus-seed/--identities/--segments/--seconds`` and the
demo's :class:`~minilisten.pipeline.DemoConfig` both come here)."""
from __future__ import annotations

#: size overrides of a synthetic corpus: keyword of :func:`~minilisten.data.synthetic.synthetic_corpus`
OVERRIDES = ("n_identities", "n_segments", "seconds")


def describe_source(data: str | None = None, corpus: str = "default", seed: int = 0, **overrides) -> str:
    """``"dataset DIR"`` or ``"synthetic corpus 'NAME' (seed S, k=v...)"``."""
    if data:
        return f"dataset {data}"
    extra = "".join(f", {k}={v}" for k, v in overrides.items() if v is not None)
    return f"synthetic corpus {corpus!r} (seed {seed}{extra})"


def open_data(data: str | None = None, corpus: str = "default", seed: int = 0, progress: bool = True,
              **overrides):
    """``(dataset, description)``: the directory ``data`` (ours, LM-listener or Learning2Listen
    layout) when given, else the synthetic corpus variant ``corpus`` with ``seed`` and the size
    ``overrides`` (:data:`OVERRIDES`; None = the variant's own). The dataset has
    ``.train/.val/.test`` (lists of :class:`~minilisten.data.segment.Segment`) and ``.n_sa``."""
    bad = sorted(set(overrides) - set(OVERRIDES))
    if bad:
        raise ValueError(f"open_data: unknown size override(s) {bad}; expected some of {list(OVERRIDES)}")
    over = {k: v for k, v in overrides.items() if v is not None}
    if data:
        from .formats import load_dataset
        return load_dataset(data, progress=progress), describe_source(data)
    from .synthetic import named_corpus
    return named_corpus(corpus, seed=seed, **over), describe_source(None, corpus, seed, **over)
