"""Checkpoint sets: atomic saves, cleanup after interrupted saves, no resume from a mixture,
file permissions; a real training subprocess SIGKILLed at many points resumes to the same weights."""
from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minilisten.checkpoint import (
    checkpoint_transaction,
    is_managed,
    load_checkpoint,
    load_train_state,
    read_tensors,
    recover,
    save_checkpoint,
    save_train_state,
    verify_checkpoint,
)
from minilisten.errors import MissingFileError, UserError


def _opt():
    p = torch.nn.Parameter(torch.arange(4.0))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    return opt


def _save_set(d, step, value):
    with checkpoint_transaction(d, step) as stage:
        save_checkpoint(stage, {"v": value}, {"w": torch.full((3,), float(value))})
        save_train_state(stage, _opt(), {"step": step})


def _leftovers(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name.endswith(".tmp"))


def test_transaction_layout_permissions_and_switch(tmp_path):
    d = tmp_path / "ck"
    old = os.umask(0o022)
    try:
        _save_set(d, 10, 1)
        _save_set(d, 20, 2)
    finally:
        os.umask(old)
    assert is_managed(d)
    cfg, sd = load_checkpoint(d)
    assert cfg == {"v": 2} and torch.equal(sd["w"], torch.full((3,), 2.0))
    assert load_train_state(d, _opt())["step"] == 20
    assert len(list((d / ".sets").iterdir())) == 1 and _leftovers(d) == []
    for p in (d / ".current").resolve().iterdir():   # what open() would give, not mkstemp's 0600
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert verify_checkpoint(d)["step"] == 20


def test_failed_transaction_changes_nothing(tmp_path):
    d = tmp_path / "ck"
    _save_set(d, 10, 1)
    with pytest.raises(RuntimeError, match="boom"):
        with checkpoint_transaction(d, 20) as stage:
            save_checkpoint(stage, {"v": 2}, {"w": torch.zeros(3)})
            raise RuntimeError("boom")
    assert load_checkpoint(d)[0] == {"v": 1} and load_train_state(d, _opt())["step"] == 10
    assert _leftovers(d) == [] and len(list((d / ".sets").iterdir())) == 1


def test_leftovers_of_interrupted_saves_are_removed(tmp_path):
    d = tmp_path / "ck"
    _save_set(d, 10, 1)
    (d / ".model.safetensors.123.abcd.tmp").write_bytes(b"half")
    (d / ".sets" / ".deadbeef.tmp").mkdir()
    (d / ".sets" / ".deadbeef.tmp" / "model.safetensors").write_bytes(b"half")
    (d / ".sets" / "000000020-orphan").mkdir()          # staged but never switched to
    os.symlink(".current/tokenizer", d / "tokenizer")    # an entry link of a set that did not become current
    recover(d)
    assert _leftovers(d) == [] and sorted(p.name for p in (d / ".sets").iterdir()) == [os.readlink(d / ".current")[6:]]
    assert not os.path.lexists(d / "tokenizer")
    assert load_checkpoint(d)[0] == {"v": 1}


def test_mixture_is_refused_naming_the_file(tmp_path):
    d = tmp_path / "ck"
    _save_set(d, 10, 1)
    # a plain per-file write replaces one entry link by a real file: the set is now a mixture
    from minilisten.checkpoint import atomic_save_tensors
    atomic_save_tensors(d / "model.safetensors", {"w": torch.zeros(3)})
    with pytest.raises(UserError, match=r"model\.safetensors.*step 10.*not part of the current set.*mixture"):
        load_train_state(d, _opt())
    with pytest.raises(UserError, match=r"model\.safetensors.*mixture"):
        load_checkpoint(d)


def test_save_checkpoint_into_managed_dir_is_a_transaction(tmp_path):
    d = tmp_path / "ck"
    _save_set(d, 10, 1)
    save_checkpoint(d, {"v": 3}, {"w": torch.zeros(3)})  # e.g. vq.save_pretrained(out_dir) after training
    assert load_checkpoint(d)[0] == {"v": 3}
    with pytest.raises(MissingFileError, match="train_state.json"):   # no stale train state beside new weights
        load_train_state(d, _opt())


def test_plain_directory_still_works(tmp_path):
    save_checkpoint(tmp_path, {"v": 1}, {"w": torch.ones(2)})
    assert not is_managed(tmp_path) and load_checkpoint(tmp_path)[0] == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("bad,what", [
    ("config.json", "checkpoint config"), ("model.safetensors", "checkpoint weights")])
def test_corrupt_files_name_the_file(tmp_path, bad, what):
    save_checkpoint(tmp_path, {"v": 1}, {"w": torch.ones(2)})
    p = tmp_path / bad
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])     # truncated
    with pytest.raises(UserError, match=rf"{what} \({p}\): expected"):
        load_checkpoint(tmp_path)


def test_corrupt_train_state_names_the_file(tmp_path):
    save_checkpoint(tmp_path, {"v": 1}, {"w": torch.ones(2)})
    save_train_state(tmp_path, _opt(), {"step": 3})
    js = tmp_path / "train_state.json"
    js.write_text("{not json")
    with pytest.raises(UserError, match=r"train state \(.*train_state.json\): expected valid JSON"):
        load_train_state(tmp_path, _opt())
    js.write_text(json.dumps({"param_groups": [], "info": {"step": 3}}))     # KeyError 'scalars'
    with pytest.raises(UserError, match=r"train state \(.*train_state.json\).*missing field 'scalars'"):
        load_train_state(tmp_path, _opt())


# ------------------------------------------------------------------ kill a real training run
VQ_ARGS = ["--width", "8", "--code-dim", "8", "--codebook-size", "16", "--steps", "40", "--save-every", "10",
           "--eval-every", "0", "--batch-size", "4", "--crop", "16", "--no-progress", "--threads", "1"]
# (crash point, what it interrupts). A save writes model.safetensors, config.json,
# train_state.safetensors, train_state.json, manifest.json ("file" 1..5), then switches.
KILLS = [("switched:1", "after the switch, before the cleanup (the first run: one committed set)"),
         ("file:1", "between model.safetensors and config.json"), ("file:3", "between the model and the train state"),
         ("file:4", "after train_state.json, before the manifest"), ("tmp:1", "a temp file written, not renamed"),
         ("staged:1", "set complete, before the switch"), ("file:7", "inside the second save of a run")]

# Runs `python -m minilisten train-vq ARGS` with the checkpoint writer wrapped so that the process
# SIGKILLs itself the N-th time it reaches POINT (argv[1] = "POINT:N", "" for no crash).
CRASH_DRIVER = """
import os, signal, sys
from minilisten import checkpoint as ck
from minilisten.__main__ import main
point, _, n = sys.argv[1].partition(":")
seen = {"in_commit": False}
def hit(name):
    seen[name] = seen.get(name, 0) + 1
    if name == point and seen[name] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
atomic, commit, recover = ck._atomic, ck._commit, ck.recover
def _atomic(path, data):
    real_replace = os.replace
    def replace(src, dst):
        hit("tmp")                 # the temp file is written, not yet renamed
        real_replace(src, dst)
    os.replace = replace
    try:
        atomic(path, data)
    finally:
        os.replace = real_replace
    hit("file")
def _commit(d, final):
    hit("staged")                  # the set is complete in .sets/, .current still the old one
    seen["in_commit"] = True
    try:
        commit(d, final)
    finally:
        seen["in_commit"] = False
def _recover(d):
    if seen["in_commit"]:
        hit("switched")            # .current switched, the old set not yet deleted
    recover(d)
ck._atomic, ck._commit, ck.recover = _atomic, _commit, _recover
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from minilisten.data import save_corpus
    from minilisten.data.synthetic import named_corpus
    d = tmp_path_factory.mktemp("corpus")
    save_corpus(named_corpus("small", seed=0, n_identities=2, n_segments=20, seconds=8), d, progress=False)
    return d


def _train(data, out, resume: bool, crash: str | None = None, kill_after: float | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CRASH_DRIVER, crash or "", "train-vq", "--data", str(data), "--out", str(out),
           *VQ_ARGS]
    proc = subprocess.Popen(cmd + (["--resume"] if resume else []), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if kill_after is not None:   # a kill at a random time once training has started saving
        t0 = time.time()
        while not (out / ".sets").exists() and proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.01)
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


def test_sigkill_at_any_point_then_resume_equals_uninterrupted_run(tiny_corpus, tmp_path):
    ref = tmp_path / "ref"
    rc, out = _train(tiny_corpus, ref, resume=False)
    assert rc == 0, out
    want = read_tensors(ref / "model.safetensors")
    run = tmp_path / "run"
    rng = random.Random(0)
    schedule = [(c, None) for c, _ in KILLS] + [(None, rng.uniform(0.0, 0.4)) for _ in range(2)]
    killed = 0
    for crash, delay in schedule:
        rc, out = _train(tiny_corpus, run, resume=(run / "train_state.json").is_file(), crash=crash, kill_after=delay)
        killed += rc == -signal.SIGKILL
        assert rc in (0, -signal.SIGKILL), out
        assert crash is None or rc == -signal.SIGKILL, f"crash point {crash} was not reached: {out}"
        if is_managed(run):
            verify_checkpoint(run)        # whatever moment the kill hit: one complete set, never a mixture
    rc, out = _train(tiny_corpus, run, resume=(run / "train_state.json").is_file())
    assert rc == 0, out
    got = read_tensors(run / "model.safetensors")
    assert got.keys() == want.keys()
    diff = max((got[k].float() - want[k].float()).abs().max().item() for k in want)
    assert diff == 0.0, f"resumed weights differ from the uninterrupted run by {diff}"
    assert killed >= len(KILLS), "the crash points must all have been reached"
    assert load_train_state(run, _vq_opt(run))["step"] == 40
    assert _leftovers(run) == [] and len(list((run / ".sets").iterdir())) == 1


def _vq_opt(d):
    from minilisten.vqvae import VQVAE
    return torch.optim.AdamW(VQVAE.from_pretrained(d).parameters())


def test_resume_with_fewer_steps_is_refused(tiny_corpus, tmp_path):
    from minilisten.data import load_corpus
    from minilisten.train_vq import train_vq
    c = load_corpus(tiny_corpus, progress=False)
    kw = dict(width=8, code_dim=8, codebook_size=16, batch_size=4, crop=16, eval_every=0, save_every=0,
              progress=False, out_dir=tmp_path, log=None)
    train_vq(c.train, [], "disentangled", steps=6, **kw)
    with pytest.raises(ValueError, match=r"--steps .*expected >= the saved step 6 to resume, got 3"):
        train_vq(c.train, [], "disentangled", steps=3, resume=True, **kw)
    assert load_train_state(tmp_path, _vq_opt(tmp_path))["step"] == 6     # nothing rewritten
