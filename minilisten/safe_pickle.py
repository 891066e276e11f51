"""The one place minilisten unpickles user files: an allowlist of globals that run no user code.

Pickles (``.pkl``, the object arrays of ``.npy``/``.npz``, the pickle inside ``torch.save``
files) can call any importable function while loading. Every reader in minilisten goes through
this module instead of ``pickle.load`` / ``np.load(allow_pickle=True)`` / ``torch.load``:

- :class:`RestrictedUnpickler` resolves only :data:`ALLOWED` globals: numpy arrays, scalars and
  dtypes, plain containers (``dict``/``list``/``tuple`` need no global; ``set``, ``frozenset``,
  ``complex``, ``slice``, ``OrderedDict``) and ``_codecs.encode`` (how numpy stores raw bytes).
  Anything else (``os.system``, ``eval``, a class with ``__reduce__``...) raises
  :class:`UnsafePickleError` naming the file and the refused global; nothing is called.
- :func:`load_pickle` (``.pkl``), :func:`load_npy` / :func:`load_npz` (object arrays are
  unpickled with the restricted unpickler), :func:`load_torch` (``torch.load(weights_only=True)``,
  torch's own restricted unpickler, extended with the same numpy allowlist).

``allow_pickle=True`` (``load_npy`` / ``load_torch``) is the explicit opt-in to full unpickling,
for files the user trusts; it is never the default. Every error is a ``ValueError`` naming the file.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger("minilisten")

_NUMPY_CORE = ("numpy._core.multiarray", "numpy.core.multiarray")
#: (module, name) pairs the restricted unpickler resolves: constructing them runs no user code.
ALLOWED = frozenset(
    [(m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "scalar")]
    + [(m, "_frombuffer") for m in ("numpy._core.numeric", "numpy.core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict")]
    + [("builtins", n) for n in ("set", "frozenset", "complex", "slice", "bytearray", "bytes", "range")]
)


class UnsafePickleError(ValueError, pickle.UnpicklingError):
    """A pickle referenced a global outside :data:`ALLOWED` (it was not called)."""


def _allowed(module: str, name: str) -> bool:
    import _compat_pickle  # protocol < 3 names: __builtin__.set -> builtins.set (as pickle itself maps them)
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    # numpy's per-dtype classes (numpy.dtypes.Float32DType, ...) are plain dtype types
    return (module, name) in ALLOWED or (module == "numpy.dtypes" and name.endswith("DType"))


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED` globals; ``where`` names the file."""

    def __init__(self, file, where: str = "pickle"):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if _allowed(module, name):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.where}: refused to unpickle global {module}.{name}: expected only numpy arrays and plain "
            f"Python values (dict, list, tuple, str, numbers); minilisten never runs code from a data file")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.where}: refused persistent id {pid!r} in a pickle: expected a plain pickle")


def loads(data: bytes, where: str = "pickle"):
    """Restricted ``pickle.loads``."""
    return _run(lambda: RestrictedUnpickler(io.BytesIO(data), where).load(), where)


def _run(fn, where: str):
    try:
        return fn()
    except UnsafePickleError:
        raise
    except Exception as e:   # only allowlisted code ran: any failure means a malformed file
        raise ValueError(f"{where}: expected a readable pickle of numpy arrays / plain values, got an unreadable "
                         f"or truncated file ({type(e).__name__}: {e})") from e


def load_pickle(path: str | os.PathLike):
    """A ``.pkl`` file through :class:`RestrictedUnpickler`."""
    p = Path(path)
    with open(p, "rb") as f:
        return _run(lambda: RestrictedUnpickler(f, str(p)).load(), str(p))


def _npy_from(f, where: str, allow_pickle: bool, mmap_mode=None) -> np.ndarray:
    """One ``.npy`` array from the open file ``f``: plain arrays with numpy's reader, object arrays
    with the restricted unpickler (or numpy's full one when ``allow_pickle``)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f, max_header_size=1 << 20) if version != (1, 0) else read(f)
    except (ValueError, EOFError, OSError) as e:
        raise ValueError(f"{where}: not a readable .npy file: {e}") from e
    if not dtype.hasobject:
        f.seek(0)
        try:
            return np.load(f, allow_pickle=False, mmap_mode=mmap_mode) if mmap_mode is None else \
                np.load(where, allow_pickle=False, mmap_mode=mmap_mode)
        except (ValueError, EOFError, OSError) as e:
            raise ValueError(f"{where}: not a readable .npy file (truncated or corrupt?): {e}") from e
    if allow_pickle:
        log.warning("%s: full unpickling of an object array (allow_pickle=True): only for files you trust", where)
        f.seek(0)
        return np.load(f, allow_pickle=True)
    obj = _run(lambda: RestrictedUnpickler(f, where).load(), where)
    if not isinstance(obj, np.ndarray) or obj.shape != tuple(shape):
        got = tuple(obj.shape) if isinstance(obj, np.ndarray) else type(obj).__name__
        raise ValueError(f"{where}: expected an object array of shape {tuple(shape)} (its header), got {got}")
    return obj


def load_npy(path: str | os.PathLike, allow_pickle: bool = False, mmap: bool = False) -> np.ndarray:
    """``np.load`` of a ``.npy`` file; object arrays go through the restricted unpickler.
    ``mmap``: memory-map plain arrays (object arrays are read whole)."""
    p = Path(path)
    with open(p, "rb") as f:
        return _npy_from(f, str(p), allow_pickle, "r" if mmap else None)


def load_npz(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` file as a dict (object arrays through the restricted unpickler)."""
    p = Path(path)
    try:
        z = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{p}: not a readable .npz file: {e}") from e
    out = {}
    with z:
        for name in z.namelist():
            key = name[:-4] if name.endswith(".npy") else name
            with z.open(name) as f:
                out[key] = _npy_from(io.BytesIO(f.read()), f"{p}[{key}]", allow_pickle)
    return out


def torch_safe_globals() -> list:
    """:data:`ALLOWED`'s numpy entries as objects, for ``torch.serialization.safe_globals``."""
    import importlib
    out = []
    for m, n in sorted(ALLOWED):
        if m.startswith("numpy"):
            try:
                out.append(getattr(importlib.import_module(m), n))
            except (ImportError, AttributeError):   # the other numpy major version's name
                pass
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


def load_torch(path: str | os.PathLike, allow_pickle: bool = False):
    """``torch.load(weights_only=True)`` (torch's restricted unpickler) + the numpy allowlist."""
    import torch
    p = Path(path)
    if allow_pickle:
        log.warning("%s: loading with full unpickling (allow_pickle=True): only for files you trust", p)
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"{p}: not a readable torch.save file: {e}") from e
    try:
        with torch.serialization.safe_globals(torch_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(p)
        except Exception:  # pragma: no cover - diagnostic only
            unsafe = []
        what = f" (it pickles {', '.join(unsafe)})" if unsafe else ""
        raise ValueError(
            f"{p}: could not be read with torch.load(weights_only=True): it contains pickled "
            f"objects other than tensors, numpy arrays and plain Python values{what}. minilisten does "
            f"not unpickle arbitrary objects silently; if you trust this file, pass allow_pickle=True "
            f"(full unpickling, can run arbitrary code).") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{p}: not a readable torch.save file (truncated or corrupt?): {e}") from e
