"""Checkpoints: ``config.json`` + ``model.safetensors`` (+ ``train_state.*`` for ``--resume``), saved as
atomic sets (:func:`checkpoint_transaction`: a reader sees the old set or the new one, never a mixture).
Layout and guarantees: docs/vqvae.md. Loaders raise UserError naming the file."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import torch

from .errors import MissingFileError, UserError, need_file

CURRENT, SETS, MANIFEST = ".current", ".sets", "manifest.json"
SET_FORMAT = "minilisten.CheckpointSet"   # every file minilisten writes is tagged {"format": ..., "version": N}


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file (mode 0666 & ~umask, as ``open`` gives) and rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), text.encode("utf-8"))


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors needs contiguous, non-shared tensors: clone what is tied/strided."""
    from safetensors.torch import save
    _atomic(Path(path), save({k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    p = need_file(path, what)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} ({p}): expected valid JSON, got {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise UserError(f"{what} ({p}): expected a JSON object, got {type(obj).__name__}")
    return obj


def read_tensors(path: str | os.PathLike, what: str = "safetensors file") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    p = need_file(path, what)
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} ({p}): expected a readable safetensors file, got {type(e).__name__}: {e}") from e


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_managed(directory: str | os.PathLike) -> bool:
    """True when ``directory`` was written by :func:`checkpoint_transaction`."""
    return os.path.islink(Path(directory) / CURRENT)


def _link(d: Path, name: str, target: str) -> None:
    """``d/name`` -> ``target`` by one ``os.replace``; a real directory in the way (a plain save's) is deleted."""
    dst = d / name
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    tmp = _tmp_name(dst)
    os.symlink(target, tmp)
    os.replace(tmp, dst)


def _remove(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def recover(directory: str | os.PathLike) -> None:
    """Delete what interrupted saves left: ``.*.tmp`` entries, sets but the current one, dangling entry links."""
    d = Path(directory)
    if not d.is_dir():
        return
    cur = (d / CURRENT).resolve() if is_managed(d) else None   # a dangling link keeps no set either
    for p in d.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            _remove(p)
        elif p.is_symlink() and p.name != CURRENT and Path(os.readlink(p)).parts[:1] == (CURRENT,) and not p.exists():
            p.unlink()
    if (d / SETS).is_dir():
        for p in (d / SETS).iterdir():
            if p.resolve() != cur:
                _remove(p)


@contextmanager
def checkpoint_transaction(directory: str | os.PathLike, step: int | None = None):
    """Yield an empty staging directory for the set's files; on normal exit the set replaces the current one
    at once, on an exception nothing changes."""
    d = Path(directory)
    (d / SETS).mkdir(parents=True, exist_ok=True)
    recover(d)
    uid = uuid.uuid4().hex[:12]
    stage = d / SETS / f".{uid}.tmp"
    os.mkdir(stage)
    try:
        yield stage
        files = sorted(p for p in stage.rglob("*") if p.is_file() and not p.is_symlink())
        sums = {str(p.relative_to(stage)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
        manifest = {"format": SET_FORMAT, "version": 1, "step": step, "files": sums}
        atomic_write_text(stage / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        for p in [*files, stage / MANIFEST, *{p.parent for p in files}, stage]:   # the set is on disk...
            _fsync(p)
        final = d / SETS / (f"{step:09d}-{uid}" if isinstance(step, int) else f"set-{uid}")
        os.rename(stage, final)
        _fsync(d / SETS)
        _commit(d, final)                                                         # ...before the switch
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _commit(d: Path, final: Path) -> None:
    """Entry links through ``.current``, ``.current`` switched to ``final`` (one rename), the old set deleted."""
    for name in sorted(p.name for p in final.iterdir() if p.name != MANIFEST):
        _link(d, name, os.path.join(CURRENT, name))   # they change nothing until the switch
    _link(d, CURRENT, os.path.join(SETS, final.name))
    _fsync(d)
    recover(d)


def verify_checkpoint(directory: str | os.PathLike, names=None) -> dict | None:
    """Check that the files of a managed directory (all, or those under ``names``) are those of its
    current set (size + sha256); returns the manifest, or None for a plain directory."""
    d = Path(directory)
    if not is_managed(d):
        return None
    cur = (d / CURRENT).resolve()
    if not cur.is_dir():
        raise UserError(f"checkpoint ({d / CURRENT}): expected a link to a complete set in {SETS}/, "
                        f"got a dangling link to {os.readlink(d / CURRENT)!r}")
    manifest = read_json(cur / MANIFEST, "checkpoint manifest")
    files = manifest.get("files")
    if manifest.get("format") != SET_FORMAT or not isinstance(files, dict):
        raise UserError(f"checkpoint manifest ({cur / MANIFEST}): expected format {SET_FORMAT!r} with a 'files' "
                        f"dict, got format {manifest.get('format')!r}")
    for rel, want in sorted(files.items()):
        p = d / rel
        if names is not None and Path(rel).parts[0] not in names:
            continue
        if not p.is_file():
            why = "missing"
        elif not p.resolve().is_relative_to(cur):
            why = f"not part of the current set (it is {p.resolve()})"
        elif p.stat().st_size != want.get("size") or _sha256(p) != want.get("sha256"):
            why = "changed since the set was saved (size or sha256 differs from the manifest)"
        else:
            continue
        raise UserError(f"checkpoint ({p}): expected the file of the set saved at step {manifest.get('step')} "
                        f"({cur / MANIFEST}), got {why}; refusing to load a mixture of checkpoints")
    return manifest


def load_model(directory: str | os.PathLike, model_cls, config_cls, fmt: str, map_location="cpu"):
    """``model_cls(config_cls(**config.json))`` in eval mode with the weights; checks the tag ``{"format": fmt,
    "version": 1}``, the config fields and the weight names/shapes."""
    cfg, state = load_checkpoint(directory)
    where = f"checkpoint {str(Path(directory))!r}"
    tag = (cfg.pop("format", None), cfg.pop("version", 1))
    if tag != (fmt, 1):
        raise UserError(f"{where}: expected format {fmt!r} version 1, got format {tag[0]!r} version {tag[1]!r}")
    unknown = sorted(set(cfg) - {f.name for f in fields(config_cls)})
    if unknown:
        raise UserError(f"{where}: config.json has unknown {config_cls.__name__} fields {unknown}")
    model = model_cls(config_cls(**cfg))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:   # missing or unexpected names, other shapes
        raise UserError(f"{where}: weights do not match config.json: {' '.join(str(e).split())}") from e
    return model.to(map_location).eval()


def save_checkpoint(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """Each file atomic, config last, into a plain directory; one transaction into a managed one."""
    d = Path(directory)
    if is_managed(d):
        with checkpoint_transaction(d) as stage:
            save_checkpoint(stage, config, state_dict)
        return
    atomic_save_tensors(d / "model.safetensors", state_dict)
    atomic_write_text(d / "config.json", json.dumps(config, indent=2, sort_keys=True))


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, weights) of a checkpoint directory, checked (files of one set, finite weights)."""
    d = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (d / name).is_file():
            got = "" if d.is_dir() else (" (it is a file)" if d.exists() else " (no such directory)")
            raise MissingFileError(f"checkpoint ({d}): expected a directory with config.json + model.safetensors, "
                                   f"missing {name}{got}")
    verify_checkpoint(d, names=("config.json", "model.safetensors"))
    config = read_json(d / "config.json", "checkpoint config")
    state = read_tensors(d / "model.safetensors", "checkpoint weights")
    check_weights(state, d / "model.safetensors")
    return config, state


def check_weights(state: dict[str, torch.Tensor], where) -> None:
    """Every float tensor finite (e.g. no NaN codebook), every ``*std`` tensor > 0; UserError naming the tensor."""
    for k, v in state.items():
        if not v.is_floating_point():
            continue
        checks = {"finite values": ~torch.isfinite(v)}
        if k.endswith("std"):
            checks["std > 0 in every dimension"] = v <= 0
        for want, bad in checks.items():
            if bad.any():
                i = tuple(int(x) for x in bad.nonzero()[0])
                raise UserError(f"checkpoint weights ({where}): tensor {k!r}: expected {want}, got {v[i].item()} "
                                f"at index {i}")


def save_train_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer, info: dict) -> None:
    """Optimizer tensors into ``train_state.safetensors``, its scalars + ``info`` into ``train_state.json``."""
    sd, d = optimizer.state_dict(), Path(directory)
    flat = {f"{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items()}
    atomic_save_tensors(d / "train_state.safetensors", {k: v for k, v in flat.items() if torch.is_tensor(v)})
    scalars = {k: v for k, v in flat.items() if not torch.is_tensor(v)}
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "info": info}
    atomic_write_text(d / "train_state.json", json.dumps(meta, indent=2))


def load_train_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer saved by :func:`save_train_state` (a mixture of sets is refused); returns ``info``."""
    d = Path(directory)
    js = need_file(d / "train_state.json", "resume")
    verify_checkpoint(d)
    meta = read_json(js, "train state")
    tensors = read_tensors(d / "train_state.safetensors", "train state")
    try:
        state: dict = {}
        for key, v in [*tensors.items(), *meta["scalars"].items()]:
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        info = meta["info"]
        if not isinstance(info["step"], int) or info["step"] < 0:
            raise ValueError(f"field 'info.step': expected an int >= 0, got {info['step']!r}")
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise UserError(f"train state ({js}): expected the optimizer state of this model, got {what}") from e
    return info
