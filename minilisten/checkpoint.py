"""Checkpoints: safetensors weights + JSON config; a training save is one atomic step.

A checkpoint directory holds ``config.json`` and ``model.safetensors`` (``VQVAE`` /
``ListenerLM.from_pretrained(dir)`` read them; a ListenerLM adds ``tokenizer/``). Training state
(optimizer, step, RNG) lives in ``train_state.safetensors`` + ``train_state.json`` for ``--resume``.

**Atomic sets.** The training loops save through :func:`checkpoint_transaction`::

    with checkpoint_transaction(out_dir, step) as stage:     # a fresh, empty directory
        model.save_pretrained(stage)
        save_train_state(stage, optimizer, info)

which lays the directory out as::

    out/config.json          -> .current/config.json        (relative symlinks; one per entry)
    out/model.safetensors    -> .current/model.safetensors
    out/train_state.json ... -> .current/train_state.json
    out/.current             -> .sets/000000040-<id>        (the switch)
    out/.sets/000000040-<id>/  the complete set + manifest.json (step, size and sha256 per file)

The whole set is written into ``.sets/.<id>.tmp``, fsynced and renamed; then the ``.current``
symlink is replaced with one ``os.replace`` (atomic on POSIX). The top-level names only ever point
through ``.current``, so every reader sees the old set or the new one, never a mixture, whatever
moment a crash (even SIGKILL or power loss) interrupts the save. The next save, and
:func:`recover`, delete what an interrupted one left (``.sets/.*.tmp``, sets that are not
current, ``.*.tmp`` files, dangling entry links). :func:`load_train_state` checks every file
against the current manifest (and :func:`load_checkpoint` the files it reads) and refuses a
directory whose files do not all belong to it (e.g. a plain ``save_pretrained`` into a managed
directory). One writer per directory. Files are created with the process umask (0644 by
default), not 0600.

Outside a transaction, :func:`save_checkpoint` into a plain directory writes file by file (each
atomically, ``config.json`` last); into a managed directory it is itself a transaction (the new
set has no train state, so ``--resume`` from it is refused rather than mixed).

Every loader names the file it failed on (``ValueError`` / ``FileNotFoundError``).

Crash points for tests: ``MINILISTEN_CRASH_AT=POINT[:N]`` SIGKILLs the process at the N-th
(default first) time it reaches POINT: ``tmp`` (a temp file written, not renamed), ``file``
(after each file), ``staged`` (set complete, before the switch), ``switched`` (after it, before
the cleanup).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

CURRENT, SETS, MANIFEST = ".current", ".sets", "manifest.json"
#: every file minilisten writes is tagged ``{"format": "minilisten.<Kind>", "version": N}``
#: (:func:`check_format`); older tags are still read
SET_FORMAT = "minilisten.CheckpointSet"
OLD_SET_FORMATS = ("minilisten-checkpoint-set",)
_crash_counts: dict[str, int] = {}


def _crash_point(name: str) -> None:
    """Test hook: ``MINILISTEN_CRASH_AT=name[:n]`` kills this process (SIGKILL) the n-th time here."""
    spec = os.environ.get("MINILISTEN_CRASH_AT")
    if not spec:
        return
    point, _, n = spec.partition(":")
    if point != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------- files
def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _umask() -> int:
    try:   # Linux: read it without changing it (os.umask is process-wide, racy with threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:  # pragma: no cover - other platforms
        pass
    mask = os.umask(0o022)  # pragma: no cover
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``. The file gets mode 0666 & ~umask, as ``open``
    would give it (``tempfile.mkstemp``, and safetensors, make 0600 files unreadable to the group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _crash_point("tmp")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _crash_point("file")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic(Path(path), w)


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """safetensors needs contiguous, non-shared tensors: clone what is tied/strided."""
    from safetensors.torch import save_file
    flat = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(flat, tmp, metadata=metadata))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """A JSON object from ``path``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} ({p}): expected a file, got {'a directory' if p.is_dir() else 'nothing'}")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} ({p}): expected valid JSON, got {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{what} ({p}): expected a JSON object, got {type(obj).__name__}")
    return obj


def read_tensors(path: str | os.PathLike, what: str = "safetensors file") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or corrupt file names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} ({p}): expected a file, got nothing")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what} ({p}): expected a readable safetensors file, got {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- atomic sets
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. directories on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def is_managed(directory: str | os.PathLike) -> bool:
    """True when ``directory`` was written by :func:`checkpoint_transaction`."""
    return os.path.islink(Path(directory) / CURRENT)


def _current_set(d: Path) -> Path | None:
    link = d / CURRENT
    if not os.path.islink(link):
        return None
    target = (d / os.readlink(link)).resolve()
    return target if target.is_dir() else None


def _entry_links(d: Path) -> list[Path]:
    """Top-level symlinks that point through ``.current``."""
    out = []
    for p in d.iterdir():
        if os.path.islink(p) and p.name != CURRENT and Path(os.readlink(p)).parts[:1] == (CURRENT,):
            out.append(p)
    return out


def _link(d: Path, name: str, target: str) -> None:
    """Make ``d/name`` a symlink to ``target`` with one ``os.replace`` (a real directory in the
    way, e.g. a plain save's ``tokenizer/``, is moved aside first)."""
    dst = d / name
    if os.path.islink(dst) and os.readlink(dst) == target:
        return
    tmp = _tmp_name(dst)
    os.symlink(target, tmp)
    if dst.is_dir() and not os.path.islink(dst):
        aside = _tmp_name(dst)
        os.rename(dst, aside)
        os.replace(tmp, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, dst)


def recover(directory: str | os.PathLike) -> None:
    """Delete what interrupted saves left in ``directory``: ``.*.tmp`` files and directories,
    staging directories and sets other than the current one, entry links that point nowhere."""
    d = Path(directory)
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    cur = _current_set(d)
    sets = d / SETS
    if sets.is_dir():
        for p in sets.iterdir():
            if cur is None or p.resolve() != cur:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in _entry_links(d):
        if not p.exists():
            p.unlink()


@contextmanager
def checkpoint_transaction(directory: str | os.PathLike, step: int | None = None):
    """Write a checkpoint set as one atomic step (module docstring). Yields an empty staging
    directory: save every file of the set into it. On normal exit the set replaces the current
    one at once; on an exception nothing changes (the staging directory is deleted)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    recover(d)
    (d / SETS).mkdir(exist_ok=True)
    uid = uuid.uuid4().hex[:12]
    stage = d / SETS / f".{uid}.tmp"
    os.mkdir(stage)
    try:
        yield stage
        _commit(d, stage, step, uid)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _commit(d: Path, stage: Path, step: int | None, uid: str) -> None:
    entries = sorted(p.name for p in stage.iterdir())
    if not entries:
        raise ValueError(f"checkpoint_transaction ({d}): expected files saved into the staging directory, got none")
    if CURRENT in entries or SETS in entries or MANIFEST in entries:
        raise ValueError(f"checkpoint_transaction ({d}): {CURRENT}, {SETS} and {MANIFEST} are reserved names")
    files = _files(stage)
    manifest = {"format": SET_FORMAT, "version": 1, "step": step,
                "files": {str(p.relative_to(stage)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}}
    atomic_write_text(stage / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    for p in [*files, stage / MANIFEST, *{p.parent for p in files}, stage]:
        _fsync(p)
    final = d / SETS / (f"{step:09d}-{uid}" if isinstance(step, int) else f"set-{uid}")
    os.rename(stage, final)
    _fsync(d / SETS)
    _crash_point("staged")
    for name in entries:   # entry links go through .current: they change nothing until the switch
        _link(d, name, os.path.join(CURRENT, name))
    tmp = _tmp_name(d / CURRENT)
    os.symlink(os.path.join(SETS, final.name), tmp)
    os.replace(tmp, d / CURRENT)   # the switch: one atomic rename
    _fsync(d)
    _crash_point("switched")
    recover(d)


def verify_checkpoint(directory: str | os.PathLike, names=None) -> dict | None:
    """Check that the files of a managed directory (all, or ``names``) are those of its current
    set (manifest size + sha256). Returns the manifest, or None for a plain directory; raises
    ``ValueError`` naming the first file that does not belong (a mixture)."""
    d = Path(directory)
    if not is_managed(d):
        return None
    cur = _current_set(d)
    if cur is None:
        raise ValueError(f"checkpoint ({d / CURRENT}): expected a link to a complete set in {SETS}/, "
                         f"got a dangling link to {os.readlink(d / CURRENT)!r}")
    manifest = read_json(cur / MANIFEST, "checkpoint manifest")
    files = manifest.get("files")
    if manifest.get("format") not in (SET_FORMAT, *OLD_SET_FORMATS) or not isinstance(files, dict):
        raise ValueError(f"checkpoint manifest ({cur / MANIFEST}): expected format {SET_FORMAT!r} with a 'files' "
                         f"dict, got format {manifest.get('format')!r}")
    for rel, want in sorted(files.items()):
        if names is not None and Path(rel).parts[0] not in names:
            continue
        p = d / rel
        why = None
        if not p.is_file():
            why = "missing"
        elif not p.resolve().is_relative_to(cur):
            why = f"not part of the current set (it is {p.resolve()})"
        elif p.stat().st_size != want.get("size") or _sha256(p) != want.get("sha256"):
            why = "changed since the set was saved (size or sha256 differs from the manifest)"
        if why:
            raise ValueError(f"checkpoint ({p}): expected the file of the set saved at step {manifest.get('step')} "
                             f"({cur / MANIFEST}), got {why}; refusing to load a mixture of checkpoints")
    return manifest


# ----------------------------------------------------------------------------- model files
def check_format(cfg: dict, want: str, where, old: dict | None = None, max_version: int = 1) -> dict:
    """Check the tag of a config dict, ``{"format": want, "version": <= max_version}``; an old tag
    (``old``: ``{key: value}``, e.g. ``{"model_type": "minilisten.vqvae"}``) is accepted too.
    Returns ``cfg`` without the tag keys; ValueError naming ``where`` otherwise."""
    cfg = dict(cfg)
    fmt, version = cfg.pop("format", None), cfg.pop("version", 1)
    olds = {k: cfg.pop(k, None) for k in (old or {})}
    if fmt is None and old and any(olds[k] == v for k, v in old.items()):
        return cfg
    if fmt != want:
        got = fmt if fmt is not None else next((f"{k}={v!r}" for k, v in olds.items() if v is not None), None)
        raise ValueError(f"{where}: expected format {want!r}, got {got!r}")
    if not (isinstance(version, int) and 1 <= version <= max_version):
        raise ValueError(f"{where}: expected version 1..{max_version} of {want}, got {version!r}")
    return cfg


def load_model(directory: str | os.PathLike, model_cls, config_cls, fmt: str, old: dict | None = None,
               map_location="cpu"):
    """``model_cls(config_cls(**config.json))`` with the weights of ``model.safetensors``, in eval
    mode on ``map_location``: the tag checked (:func:`check_format`), unknown config fields,
    missing/unexpected weights and shape mismatches refused with a ValueError naming the checkpoint."""
    from dataclasses import fields
    cfg, state = load_checkpoint(directory)
    where = f"checkpoint {str(Path(directory))!r}"
    cfg = check_format(cfg, fmt, where, old=old)
    unknown = sorted(set(cfg) - {f.name for f in fields(config_cls)})
    if unknown:
        raise ValueError(f"{where}: config.json has unknown {config_cls.__name__} fields {unknown}")
    model = model_cls(config_cls(**cfg))
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{where}: weight {k!r}: expected shape {tuple(own[k].shape)} from config.json, "
                             f"got {tuple(v.shape)}")
    model.load_state_dict(state)
    return model.to(map_location).eval()


def save_checkpoint(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` + ``model.safetensors`` into ``directory``: file by file (each
    atomic, config last) into a plain directory, as one transaction into a managed one."""
    d = Path(directory)
    if is_managed(d):
        with checkpoint_transaction(d) as stage:
            save_checkpoint(stage, config, state_dict)
        return
    atomic_save_tensors(d / "model.safetensors", state_dict)
    atomic_write_text(d / "config.json", json.dumps(config, indent=2, sort_keys=True))


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``config.json`` + ``model.safetensors``; errors name the directory or the file."""
    d = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (d / name).is_file():
            got = "" if d.is_dir() else (" (it is a file)" if d.exists() else " (no such directory)")
            raise FileNotFoundError(f"checkpoint ({d}): expected a directory with config.json + model.safetensors, "
                                    f"missing {name}{got}")
    verify_checkpoint(d, names=("config.json", "model.safetensors"))
    config = read_json(d / "config.json", "checkpoint config")
    state = read_tensors(d / "model.safetensors", "checkpoint weights")
    check_weights(state, d / "model.safetensors")
    return config, state


def check_weights(state: dict[str, torch.Tensor], where) -> None:
    """Weights a model can use: every float tensor finite (e.g. no NaN codebook), every ``*std``
    tensor (normalisation statistics) > 0. Raises ``ValueError`` naming the tensor and ``where``."""
    for k, v in state.items():
        if not v.is_floating_point() or not v.numel():
            continue
        bad = ~torch.isfinite(v)
        if bad.any():
            i = tuple(int(x) for x in bad.nonzero()[0])
            raise ValueError(f"checkpoint weights ({where}): tensor {k!r}: expected finite values, got {v[i].item()} "
                             f"at index {i}")
        if k.rsplit(".", 1)[-1].endswith("std") and (v <= 0).any():
            i = int(v.reshape(-1).argmin())
            raise ValueError(f"checkpoint weights ({where}): tensor {k!r}: expected std > 0 in every dimension, got "
                             f"{v.reshape(-1)[i].item()} at index {i}")


# ----------------------------------------------------------------------------- train state
def save_train_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer, info: dict) -> None:
    """Optimizer tensors into ``train_state.safetensors``, scalars + ``info`` into ``train_state.json``
    (inside a :func:`checkpoint_transaction` together with the model)."""
    d = Path(directory)
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    atomic_save_tensors(d / "train_state.safetensors", tensors)
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "info": info}
    atomic_write_text(d / "train_state.json", json.dumps(meta, indent=2))


def load_train_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer saved by :func:`save_train_state`; returns its ``info`` dict. A
    managed directory is verified first: a mixture of sets is refused, naming the file."""
    d = Path(directory)
    js, st = d / "train_state.json", d / "train_state.safetensors"
    if not js.is_file():
        raise FileNotFoundError(f"resume ({d}): expected {js.name} (saved with the model), got no such file")
    verify_checkpoint(d)
    meta = read_json(js, "train state")
    tensors = read_tensors(st, "train state")
    try:
        state: dict = {}
        for key, v in tensors.items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        for key, v in meta["scalars"].items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        info = meta["info"]
        if not isinstance(info, dict) or not isinstance(info.get("step"), int) or info["step"] < 0:
            raise ValueError(f"field 'info.step': expected an int >= 0, got {info.get('step') if isinstance(info, dict) else info!r}")
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"train state ({js}): expected the optimizer state of this model, got {what}") from e
    return info
