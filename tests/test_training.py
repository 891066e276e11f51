"""The training loop (minilisten.training), the trainers' shared options and CLI options derived from
dataclasses (minilisten.cli_config)."""
import argparse
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from minilisten.cli_config import add_dataclass_args, dataclass_kwargs, field_docs
from minilisten.training import LoopConfig, TrainLoop, append_jsonl, step_decay


# ----------------------------------------------------------------------------- schedule
def test_step_decay_values():
    f = step_decay(1e-3, warmup=3, decay_step=6, final_learning_rate=1e-5)
    want = [1e-3 * 1 / 3, 1e-3 * 2 / 3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-5, 1e-5]
    assert [f(s) for s in range(8)] == pytest.approx(want, rel=1e-12)
    assert [step_decay(2.0)(s) for s in (0, 10**6)] == [2.0, 2.0]           # no warm-up, no decay
    assert step_decay(2.0, decay_step=1)(5) == 2.0                          # no final value: unchanged
    with pytest.raises(ValueError, match="warmup: expected an int >= 0, got -1"):
        step_decay(1.0, warmup=-1)
    with pytest.raises(ValueError, match="learning_rate: expected a finite number >= 0, got nan"):
        step_decay(float("nan"))


# ----------------------------------------------------------------------------- the loop
class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x):
        return self.lin(self.drop(x))

    def save_pretrained(self, d):
        torch.save(self.state_dict(), f"{d}/toy.pt")


SCHEDULE = step_decay(0.05, warmup=3, decay_step=7, final_learning_rate=0.005)


def toy_config(steps, **kw):
    return LoopConfig(steps=steps, learning_rate=0.05, warmup=3, decay_step=7, final_learning_rate=0.005,
                      grad_clip=0.0, progress=False, **kw)


class Recording(TrainLoop):
    """A loop that records the steps it saved at."""
    saved: list

    def save(self, step):
        self.saved.append(step)
        super().save(step)


def toy_run(out_dir, steps, *, resume=False, save_every=0, eval_every=0, restore_rng=True, saved=None):
    """A loop whose data come from a numpy generator and whose dropout uses torch's RNG, so an
    exact resume needs both RNG states, the optimizer and the scheduler."""
    model = Toy()
    if resume and out_dir is not None:      # the trainer loads the model; the loop restores the rest
        model.load_state_dict(torch.load(f"{out_dir}/toy.pt"))
    rng = np.random.default_rng(0)
    val_x = torch.ones(3, 4)
    loop = Recording(model, toy_config(steps, save_every=save_every, eval_every=eval_every), out_dir=out_dir,
                     numpy_rng=rng if restore_rng else None, save_model=model.save_pretrained,
                     validate=lambda step: {"val": model.eval()(val_x).sum().item()})
    loop.saved = [] if saved is None else saved
    if resume:
        loop.resume()
    seen = []

    def step_fn(step, k):
        x = torch.from_numpy(rng.normal(size=(8, 4)).astype(np.float32))
        seen.append((step, loop.optimizer.param_groups[0]["lr"]))
        return ((model(x) - x.sum(1, keepdim=True)) ** 2).mean(), {"loss": 0.0}
    history = loop.run(step_fn)
    return model, history, seen


def test_resume_is_exact(tmp_path):
    full, hist_full, seen_full = toy_run(tmp_path / "full", 10, eval_every=3)
    part, _, _ = toy_run(tmp_path / "part", 4, eval_every=3)
    assert json.loads((tmp_path / "part" / "train_state.json").read_text())["info"]["step"] == 4
    res, hist_res, seen_res = toy_run(tmp_path / "part", 10, resume=True, eval_every=3)
    for k, v in full.state_dict().items():
        assert torch.equal(res.state_dict()[k], v), k
    assert seen_full == [(s, SCHEDULE(s)) for s in range(10)]   # the loop applies the schedule
    assert seen_res == seen_full[4:]                       # the same learning rates from step 4 on
    assert [h["step"] for h in hist_full] == [3, 6, 9, 10]
    assert [h["step"] for h in hist_res] == [3, 4, 6, 9, 10]   # + the end of the first part
    assert [h for h in hist_res if h["step"] != 4] == hist_full
    # a second resume at the end trains nothing and does not validate again
    again, hist, seen = toy_run(tmp_path / "part", 10, resume=True, eval_every=3)
    assert seen == [] and hist == hist_res


def test_resume_without_the_data_rng_differs(tmp_path):
    """The control of test_resume_is_exact: not restoring the data sampler's RNG changes the result."""
    full, _, _ = toy_run(tmp_path / "full", 8)
    toy_run(tmp_path / "part", 4)
    res, _, _ = toy_run(tmp_path / "part", 8, resume=True, restore_rng=False)
    assert not torch.equal(res.lin.weight, full.lin.weight)


def test_resume_refuses_fewer_steps(tmp_path):
    toy_run(tmp_path, 6)
    with pytest.raises(ValueError, match=r"--steps .*expected >= the saved step 6 to resume, got 3"):
        toy_run(tmp_path, 3, resume=True)
    with pytest.raises(ValueError, match="resume: expected out_dir"):
        toy_run(None, 3, resume=True)


def test_save_points_and_atomic_sets(tmp_path):
    saved = []
    toy_run(tmp_path, 7, save_every=3, saved=saved)
    assert saved == [3, 6, 7]
    from minilisten.checkpoint import verify_checkpoint
    assert verify_checkpoint(tmp_path)["step"] == 7
    saved.clear()
    toy_run(tmp_path / "b", 7, eval_every=2, saved=saved)    # save_every 0: at validations and at the end
    assert saved == [2, 4, 6, 7]
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4, 6, 7]


def test_nan_loss_is_an_error():
    model = Toy()
    loop = TrainLoop(model, LoopConfig(steps=3, progress=False), desc="toy")
    with pytest.raises(FloatingPointError, match="toy: loss became nan at step 0"):
        loop.run(lambda step, k: (model(torch.ones(2, 4)).sum() * float("nan"), {}))


def test_loop_config_checks_its_fields():
    with pytest.raises(ValueError, match="steps: expected a positive int, got 0"):
        LoopConfig(steps=0)
    with pytest.raises(ValueError, match="eval_every: expected an int >= 0, got -1"):
        LoopConfig(eval_every=-1)
    with pytest.raises(ValueError, match="--batch-size: expected a multiple of --grad-accum 3, got 8"):
        LoopConfig(batch_size=8, grad_accum=3)
    with pytest.raises(ValueError, match="--precision: expected one of"):
        LoopConfig(precision="fp8")
    c = LoopConfig(batch_size=8, grad_accum=2)
    assert c.micro == 4 and c.local(np.arange(8), 1).tolist() == [4, 5, 6, 7]   # one process: all of micro-batch 1


def test_stats_are_averaged_for_the_bar():
    model = Toy()
    loop = TrainLoop(model, LoopConfig(steps=4, progress=False))
    loop.run(lambda step, k: (model(torch.ones(2, 4)).sum(), {"n": step * 2}))
    assert loop.ema["n"] == pytest.approx(((0 * 0.9 + 0.1 * 2) * 0.9 + 0.1 * 4) * 0.9 + 0.1 * 6)


def test_append_jsonl_appends_in_place(tmp_path):
    """The file is appended to, not rewritten: its inode and its earlier bytes stay."""
    path = tmp_path / "sub" / "log.jsonl"
    append_jsonl(path, {"step": 1})
    inode = path.stat().st_ino
    with open(path, "a") as f:
        f.write("not json\n")                 # a rewrite through json would not keep this line
    append_jsonl(path, {"step": 2, "x": 0.5})
    assert path.stat().st_ino == inode
    assert path.read_text() == '{"step": 1}\nnot json\n{"step": 2, "x": 0.5}\n'


# ----------------------------------------------------------------------------- the trainers fit to the data
def _short(segments, T):
    return [s.window(0, T) for s in segments if s.T >= T]


def test_train_vq_fits_its_crop_to_64_frame_segments():
    """Learning2Listen's 64-frame rows with the default crop (240): trained on 64-frame crops, said once."""
    from minilisten.data.synthetic import named_corpus
    from minilisten.train_vq import CropSampler, train_vq
    c = named_corpus("small", n_segments=30, seconds=8)
    said, crops = [], []
    take = CropSampler.take
    CropSampler.take = lambda self, j: crops.append(self.crop) or take(self, j)
    try:
        m = train_vq(_short(c.train, 64), _short(c.val, 64), "naive", steps=2, batch_size=2, width=16, code_dim=8,
                     codebook_size=16, progress=False, log=said.append)
    finally:
        CropSampler.take = take
    assert crops == [64, 64] and m.eval_window == 64
    assert [x for x in said if "not 240" in x] == ["validation window: the longest segment holds 64 frames, not 240: "
                                                   "using 64"]


def test_train_lm_fits_its_window_to_64_frame_segments():
    from minilisten.data.synthetic import named_corpus
    from minilisten.train_lm import train_lm
    c = named_corpus("small", n_segments=30, seconds=8)
    said = []
    m = train_lm(_short(c.train, 64), _short(c.val, 64), stage=1, steps=1, progress=False, log=said.append,
                 backbone=dict(n_layer=1, n_embd=32, n_head=2))
    assert [x for x in said if "--window" in x] == ["--window: the longest segment holds 64 frames, not 240: using 64"]
    assert m.train_log[-1]["count"] > 0          # validated on 64-frame windows


@pytest.mark.parametrize("module", ["minilisten.train_vq", "minilisten.train_lm", "minilisten.train_arig"])
def test_no_legacy_learning_rate_flags(module, capsys):
    import importlib
    main = importlib.import_module(module).main
    for flag in ("--lr", "--lr-final", "--decay-at", "--lr-decay-step", "--lr-after"):
        with pytest.raises(SystemExit):
            main([flag, "0.1", "--out", "x", "--stage", "1"])
        assert f"unrecognized arguments: {flag} 0.1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CLI from dataclasses
@dataclass
class Opts:
    steps: int = 10               # optimisation steps
    rate: float = 0.5             # a rate in % of something
    name: str = "x"
    maybe: int | None = None      # None: decided later
    pair: tuple[float, float] = (0.5, 0.99)
    flag: bool = False            # switch it on


def _parser(**kw):
    p = argparse.ArgumentParser(prog="t")
    names = add_dataclass_args(p, Opts, **kw)
    return p, names


def test_dataclass_args_types_and_only_given_values():
    p, names = _parser()
    assert names == ["steps", "rate", "name", "maybe", "pair", "flag"]
    assert dataclass_kwargs(p.parse_args([]), names) == {}
    a = p.parse_args(["--steps", "3", "--rate", "0.25", "--maybe", "4", "--pair", "0.1", "0.2", "--flag"])
    assert dataclass_kwargs(a, names) == {"steps": 3, "rate": 0.25, "maybe": 4, "pair": (0.1, 0.2), "flag": True}
    assert Opts(**dataclass_kwargs(a, names)).pair == (0.1, 0.2)
    assert dataclass_kwargs(p.parse_args(["--no-flag"]), names) == {"flag": False}
    with pytest.raises(SystemExit):
        p.parse_args(["--steps", "x"])


def test_dataclass_args_help_prints_each_default_once():
    assert field_docs(Opts)["steps"] == "optimisation steps" and "name" not in field_docs(Opts)
    p, _ = _parser(skip=("name",), defaults={"steps": 64}, alt_defaults={"--paper": {"steps": 300, "rate": 0.5}},
                   flags={"rate": "--the-rate"}, metavars={"steps": "N"})
    helps = {}
    for a in p._actions:
        helps.setdefault(a.dest, a.help)     # the shown option, not its hidden alias
    assert helps["steps"] == "optimisation steps (default: 64; --paper: 300)"
    assert helps["rate"] == "a rate in %% of something (default: 0.5)"     # same --paper value: not repeated
    assert helps["maybe"] == "None: decided later"                         # None is not shown as a default
    assert helps["pair"] == "(default: 0.5 0.99)"
    assert "name" not in helps
    text = p.format_help()
    assert "--the-rate" in text and "--steps N" in text
    with pytest.raises(ValueError, match=r"expected field names of Opts, got \['nope'\]"):
        _parser(skip=("nope",))


@pytest.mark.parametrize("module", ["minilisten.train_vq", "minilisten.train_lm", "minilisten.train_arig",
                                    "minilisten.data.cli"])
def test_command_help_shows_each_default_once(module, capsys):
    import importlib
    mod = importlib.import_module(module)
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    text = capsys.readouterr().out
    blocks = text.split("\n  -")            # one block per option
    assert all(b.count("(default:") <= 1 and b.count("default: ") <= 1 for b in blocks), \
        [b for b in blocks if b.count("default: ") > 1]


def test_cli_defaults_are_the_dataclass_defaults(capsys):
    from minilisten.train_lm import TrainConfig, main
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())   # past the usage line
    c = TrainConfig()
    for flag, v in (("--warmup", c.warmup), ("--weight-decay", c.weight_decay), ("--val-windows", c.val_windows),
                    ("--lr-noise", c.lr_noise)):
        shown = text.split(flag, 1)[1].split(" --", 1)[0]
        assert f"(default: {v})" in shown or f"(default: {v};" in shown, flag   # "; --paper: ..." may follow


def test_evaluate_arig_scores_the_test_clips_with_valence_only_when_every_segment_has_it():
    from dataclasses import replace as dc_replace

    from minilisten.arig import ARIG, ARIGConfig, arig_generate
    from minilisten.data.synthetic import named_corpus
    from minilisten.data.windows import test_clips
    from minilisten.metrics import ValenceRegressor, score
    from minilisten.train_arig import data_config, evaluate_arig
    c = named_corpus("small", n_segments=30, seconds=8)
    torch.manual_seed(0)
    m = ARIG(ARIGConfig(d_model=16, n_head=2, d_ff=32, depth=2, window=6, diff_width=16, word_buckets=64,
                        sample_steps=2, **data_config(c.train))).eval()
    clips = test_clips(c.test, 2)
    assert all(s.valence is not None for s in c.train + clips)
    got = evaluate_arig(m, c.train, c.test, max_clips=2, seed=3)
    reg = ValenceRegressor().fit([s.listener_motion for s in c.train], [s.valence for s in c.train])
    want = score(arig_generate(m, clips, seed=3), clips, reg, 3)
    assert set(got) == set(want) | {"generate_seconds"}
    assert all(np.allclose(got[k], want[k], equal_nan=True) for k in want)
    no_val = [dc_replace(s, valence=None) if i == 0 else s for i, s in enumerate(c.train)]
    got = evaluate_arig(m, no_val, c.test, max_clips=2, seed=3)
    assert set(got) == set(score(arig_generate(m, clips, seed=3), clips, None, 3)) | {"generate_seconds"}
    assert set(want) - set(got)     # the valence metric is left out
