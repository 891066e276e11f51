"""Command-line options from config dataclasses (one ``--field-name`` per field, typed by its annotation,
helped by its trailing ``# comment``) and the CLI's argument parser. Usage: docs/vqvae.md (command line)."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from functools import lru_cache


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors print one line, ``error: <message> (<prog>); see <prog> --help``, and exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {' '.join(message.split())} ({self.prog}); see {self.prog} --help\n")


_COMMENTED = re.compile(r"""^[ \t]+(\w+):(?:[^#\n'"]|'[^'\n]*'|"[^"\n]*")*#\s*(.*?)\s*$""", re.M)   # name: ...  # text


@lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """``{field: text}`` from ``metadata["help"]`` or the trailing ``# comment`` of each field's line."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):   # no source (e.g. a class made at run time)
        src = ""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    docs = {name: text for name, text in _COMMENTED.findall(src) if name in fields}
    return docs | {n: f.metadata["help"] for n, f in fields.items() if f.metadata.get("help")}


def _kind(tp) -> tuple[type, object]:
    """(element type, nargs) of an annotation: X, X | None, tuple[X, ...] or tuple[X, X]."""
    origin, args = typing.get_origin(tp), [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    if origin is tuple and len(set(args) - {Ellipsis}) == 1:
        return args[0], "+" if Ellipsis in args else len(args)
    if tp in (int, float, str, bool):
        return tp, None
    raise TypeError(f"unsupported annotation {tp!r}: expected int, float, str, bool, X | None or tuple[X, ...]")


def _show(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, tuple) else str(v)


def add_dataclass_args(parser, cls, *, only=None, skip=(), defaults: dict | None = None,
                       alt_defaults: dict[str, dict] | None = None, flags: dict[str, str] | None = None,
                       choices: dict | None = None, help: dict[str, str] | None = None,
                       metavars: dict[str, str] | None = None) -> list[str]:
    """Add one option (argparse default None) per field of ``cls`` to ``parser`` or a group; returns the
    field names added. ``only`` (and its order) / ``skip`` select fields; ``defaults``: the default shown
    instead of the field's; ``alt_defaults``: ``{"--paper": {field: value}}`` shown after it; ``flags``,
    ``choices``, ``help``, ``metavars``: ``{field: ...}`` overrides. A default of None is not shown."""
    hints, by_name, docs = typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}, field_docs(cls)
    defaults, alt_defaults, flags, choices = defaults or {}, alt_defaults or {}, flags or {}, choices or {}
    names = [n for n in (by_name if only is None else only) if n not in skip]
    if unknown := [n for n in [*names, *skip, *defaults, *flags, *choices] if n not in by_name]:
        raise ValueError(f"add_dataclass_args({cls.__name__}): expected field names of {cls.__name__}, got {unknown}")
    for name in names:
        typ, nargs = _kind(hints[name])
        f = by_name[name]
        shown = defaults.get(name, f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        parts = [] if shown in (dataclasses.MISSING, None) else [f"default: {_show(shown)}"]
        parts += [f"{k}: {_show(d[name])}" for k, d in alt_defaults.items() if name in d and d[name] != shown]
        text = (help or {}).get(name, docs.get(name, "")).replace("%", "%%")
        kw = dict(dest=name, default=None, help=f"{text} ({'; '.join(parts)})".lstrip() if parts else text)
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif name in choices:
            kw.update(type=typ, nargs=nargs, choices=list(choices[name]))
        else:
            kw.update(type=typ, nargs=nargs, metavar=(metavars or {}).get(name, typ.__name__.upper()))
        parser.add_argument(flags.get(name, "--" + name.replace("_", "-")), **kw)
    return names


def dataclass_kwargs(args: argparse.Namespace, names) -> dict:
    """``{field: value}`` of the options in ``names`` that were given (not None); lists become tuples."""
    return {n: tuple(v) if isinstance(v, list) else v for n in names if (v := getattr(args, n, None)) is not None}
