"""Checkpoints: safetensors weights + JSON config, written atomically (temp file + rename).

A checkpoint directory holds ``config.json`` and ``model.safetensors`` (and whatever extra files a
caller writes with :func:`atomic_write_text`, e.g. a tokenizer). Training state (optimizer, step)
lives in ``train_state.safetensors`` + ``train_state.json`` so ``--resume`` can continue exactly.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic(Path(path), w)


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """safetensors needs contiguous, non-shared tensors: clone what is tied/strided."""
    flat = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(flat, tmp, metadata=metadata))


def save_checkpoint(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` atomically (file by file)."""
    d = Path(directory)
    atomic_save_tensors(d / "model.safetensors", state_dict)
    atomic_write_text(d / "config.json", json.dumps(config, indent=2, sort_keys=True))


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``config.json`` + ``model.safetensors``; FileNotFoundError names what is missing."""
    d = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"checkpoint {str(d)!r}: missing {name} (expected config.json + model.safetensors)")
    config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    return config, load_file(str(d / "model.safetensors"))


def save_train_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer, info: dict) -> None:
    """Optimizer tensors into ``train_state.safetensors``, scalars + ``info`` into ``train_state.json``."""
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
    """Restore the optimizer saved by :func:`save_train_state`; returns its ``info`` dict."""
    d = Path(directory)
    if not (d / "train_state.json").is_file():
        raise FileNotFoundError(f"cannot resume from {str(d)!r}: no train_state.json there")
    meta = json.loads((d / "train_state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(d / "train_state.safetensors"))
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["info"]
