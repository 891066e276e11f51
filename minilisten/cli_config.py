"""Command-line options derived from config dataclasses (one definition of each option).

    g = parser.add_argument_group("model (VQConfig)")
    names = add_dataclass_args(g, VQConfig, only=("width", "code_dim"), defaults={"width": 64},
                               alt_defaults={"--paper": {"width": 512}})
    args = parser.parse_args(argv)
    overrides = dataclass_kwargs(args, names)        # only the options given on the command line

One ``--field-name`` option per dataclass field (``flags`` renames one, ``aliases`` adds hidden old
spellings). Types come from the annotations: ``int``, ``float``, ``str``, ``bool``
(``--x/--no-x``), ``X | None``, ``tuple[X, ...]`` (``nargs``). Every option's argparse default is
None, so :func:`dataclass_kwargs` returns exactly what the user gave and the caller fills the rest
(the dataclass default, a preset, ``--quick`` or ``--paper`` values). The help text is the
field's ``metadata["help"]`` or, failing that, its trailing ``# comment`` in the source, then
``(default: X)`` once (the dataclass default, or ``defaults[name]``; None is not shown), then ``; --paper: Y`` for
each entry of ``alt_defaults``. Use a formatter without ``ArgumentDefaultsHelpFormatter`` (it
would print each default a second time).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from functools import lru_cache

__all__ = ["add_dataclass_args", "dataclass_kwargs", "field_docs", "flag_of"]

_MISSING = dataclasses.MISSING


@lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """``{field: text}`` from ``metadata["help"]`` or the trailing ``# comment`` of each field's line
    in the class source (empty when the source is unavailable)."""
    docs = {}
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        src = ""
    if src:
        comments = {}
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        body = ast.parse(src).body[0].body
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.lineno in comments:
                docs[node.target.id] = comments[node.lineno]
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            docs[f.name] = f.metadata["help"]
    return docs


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field):
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def _kind(tp) -> tuple[type, object]:
    """(element type, nargs) of an annotation; ``X | None`` -> X."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"unsupported annotation {tp!r}: expected X or X | None")
        return _kind(rest[0])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0], "+"
        if len(set(args)) != 1:
            raise TypeError(f"unsupported annotation {tp!r}: expected a tuple of one element type")
        return args[0], len(args)
    if tp in (int, float, str, bool):
        return tp, None
    raise TypeError(f"unsupported annotation {tp!r}: expected int, float, str, bool, X | None or tuple[X, ...]")


def _show(v) -> str:
    if isinstance(v, tuple):
        return " ".join(map(str, v))
    return str(v)


def add_dataclass_args(parser, cls, *, only=None, skip=(), defaults: dict | None = None,
                       alt_defaults: dict[str, dict] | None = None, flags: dict[str, str] | None = None,
                       aliases: dict[str, list[str]] | None = None, choices: dict | None = None,
                       help: dict[str, str] | None = None, metavars: dict[str, str] | None = None) -> list[str]:
    """Add one option per field of dataclass ``cls`` to ``parser`` (a parser or an argument group);
    returns the field names added (the ``dest`` of each option). ``only``/``skip`` select fields
    (``only`` also sets the order); ``defaults``: the default shown when it is not the field's;
    ``alt_defaults``: ``{"--paper": {field: value}}`` shown after it; ``flags``: ``{field: "--flag"}``;
    ``aliases``: ``{field: ["--old-flag"]}`` (accepted, not shown); ``choices``: ``{field: [...]}``;
    ``help``: ``{field: text}`` instead of the field's own; ``metavars``: ``{field: "DIR"}``. A
    default of None is not shown (say in the help what None means)."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = list(only) if only is not None else [n for n in by_name]
    unknown = [n for n in [*names, *skip, *(defaults or {}), *(flags or {}), *(aliases or {}), *(choices or {})]
               if n not in by_name]
    if unknown:
        raise ValueError(f"add_dataclass_args({cls.__name__}): expected field names of {cls.__name__}, got {unknown}")
    docs = field_docs(cls)
    out = []
    for name in names:
        if name in skip:
            continue
        f = by_name[name]
        typ, nargs = _kind(hints[name])
        shown = (defaults or {}).get(name, _default(f))
        text = (help or {}).get(name, docs.get(name, ""))
        text = text.replace("%", "%%")
        parts = [] if shown is _MISSING or shown is None else [f"default: {_show(shown)}"]
        parts += [f"{k}: {_show(d[name])}" for k, d in (alt_defaults or {}).items() if name in d and d[name] != shown]
        if parts:
            text = f"{text} ({'; '.join(parts)})" if text else f"({'; '.join(parts)})"
        flag = (flags or {}).get(name, flag_of(name))
        kw = dict(dest=name, default=None, help=text)
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=typ, metavar=(metavars or {}).get(name, typ.__name__.upper()))
            if nargs is not None:
                kw["nargs"] = nargs
            if choices and name in choices:
                kw.update(choices=list(choices[name]), metavar=None)
        parser.add_argument(flag, **kw)
        for old in (aliases or {}).get(name, []):
            parser.add_argument(old, **{**kw, "help": argparse.SUPPRESS})
        out.append(name)
    return out


def dataclass_kwargs(args: argparse.Namespace, names) -> dict:
    """``{field: value}`` of the options in ``names`` that were given (not None); tuples stay tuples."""
    out = {}
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            out[n] = tuple(v) if isinstance(v, list) else v
    return out
