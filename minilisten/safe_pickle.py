"""The one place minilisten unpickles user files: only :data:`ALLOWED` globals (numpy arrays, scalars,
dtypes, plain containers) are resolved; ``allow_pickle=True`` opts in to full unpickling. docs/vqvae.md."""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pickle
import zipfile

import numpy as np

from .errors import UserError, need_file

log = logging.getLogger("minilisten")

#: (module, name) pairs the restricted unpickler resolves: constructing them runs no user code.
ALLOWED = frozenset(
    [(m, n) for m in ("numpy._core.multiarray", "numpy.core.multiarray") for n in ("_reconstruct", "scalar")]
    + [(m, "_frombuffer") for m in ("numpy._core.numeric", "numpy.core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict")]
    + [("builtins", n) for n in ("set", "frozenset", "complex", "slice", "bytearray", "bytes", "range")]
)


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """A pickle referenced a global outside :data:`ALLOWED` (it was not called)."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED` globals; ``where`` names the file."""

    def __init__(self, file, where: str = "pickle"):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        import _compat_pickle  # protocol < 3 names: __builtin__.set -> builtins.set (as pickle itself maps them)
        m, n = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        m = _compat_pickle.IMPORT_MAPPING.get(m, m)
        if (m, n) in ALLOWED or (m == "numpy.dtypes" and n.endswith("DType")):   # numpy's dtype classes
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.where}: refused to unpickle global {module}.{name}: expected only numpy arrays and plain "
            f"Python values (dict, list, tuple, str, numbers); minilisten never runs code from a data file")


def _run(fn, where: str):
    try:
        return fn()
    except UnsafePickleError:
        raise
    except Exception as e:   # only allowlisted code ran: any failure means a malformed file
        raise UserError(f"{where}: expected a readable pickle of numpy arrays / plain values, got an unreadable "
                        f"or truncated file ({type(e).__name__}: {e})") from e


def load_pickle(path: str | os.PathLike):
    """A ``.pkl`` file through :class:`RestrictedUnpickler`."""
    p = need_file(path)
    with open(p, "rb") as f:
        return _run(lambda: RestrictedUnpickler(f, str(p)).load(), str(p))


def _npy_from(f, where: str, allow_pickle: bool, mmap_mode=None) -> np.ndarray:
    """One ``.npy`` array from the open file ``f``; object arrays through the restricted unpickler."""
    fmt = np.lib.format
    try:
        read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f, max_header_size=1 << 20)
        if not dtype.hasobject:
            f.seek(0)   # numpy memory-maps a path, not an open file
            return np.load(where if mmap_mode else f, allow_pickle=False, mmap_mode=mmap_mode)
    except (ValueError, EOFError, OSError) as e:
        raise UserError(f"{where}: not a readable .npy file (truncated or corrupt?): {e}") from e
    if allow_pickle:
        log.warning("%s: full unpickling of an object array (allow_pickle=True): only for files you trust", where)
        f.seek(0)
        return np.load(f, allow_pickle=True)
    obj = _run(lambda: RestrictedUnpickler(f, where).load(), where)
    if not isinstance(obj, np.ndarray) or obj.shape != tuple(shape):
        got = tuple(obj.shape) if isinstance(obj, np.ndarray) else type(obj).__name__
        raise UserError(f"{where}: expected an object array of shape {tuple(shape)} (its header), got {got}")
    return obj


def load_npy(path: str | os.PathLike, allow_pickle: bool = False, mmap: bool = False) -> np.ndarray:
    """``np.load`` of a ``.npy`` file, object arrays through the restricted unpickler; ``mmap``: plain arrays."""
    p = need_file(path)
    with open(p, "rb") as f:
        return _npy_from(f, str(p), allow_pickle, "r" if mmap else None)


def load_npz(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` file as a dict (object arrays through the restricted unpickler)."""
    p = need_file(path)
    try:
        z = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{p}: not a readable .npz file: {e}") from e
    with z:
        keys = {name: name.removesuffix(".npy") for name in z.namelist()}
        return {k: _npy_from(io.BytesIO(z.read(name)), f"{p}[{k}]", allow_pickle) for name, k in keys.items()}


def _torch_safe_globals() -> list:
    """:data:`ALLOWED`'s numpy entries and numpy's dtype classes, for ``torch.serialization.safe_globals``."""
    out = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    for m, n in sorted(a for a in ALLOWED if a[0].startswith("numpy")):
        with contextlib.suppress(ImportError, AttributeError):   # the other numpy major version's name
            out.append(getattr(importlib.import_module(m), n))
    return out


def load_torch(path: str | os.PathLike, allow_pickle: bool = False):
    """``torch.load(weights_only=True)`` (torch's restricted unpickler) + the numpy allowlist."""
    import torch
    p = need_file(path)
    if allow_pickle:
        log.warning("%s: loading with full unpickling (allow_pickle=True): only for files you trust", p)
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        if allow_pickle:
            raise UserError(f"{p}: not a readable torch.save file: {e}") from e
        unsafe = []
        with contextlib.suppress(Exception):   # diagnostic only
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(p)
        what = f" (it pickles {', '.join(unsafe)})" if unsafe else ""
        raise UserError(f"{p}: expected tensors, numpy arrays and plain values (torch.load(weights_only=True)), got "
                        f"other pickled objects{what}; if you trust this file, pass allow_pickle=True") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{p}: not a readable torch.save file (truncated or corrupt?): {e}") from e
