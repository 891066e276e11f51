"""Several processes (``minilisten.distributed``) on CPU with the gloo backend.

Equivalence: W = 2 processes x batch b must give the same parameters, codebook and loss curve as
1 process x batch 2b with the same data order (tolerance: 1e-5 absolute on parameters and codebook
after 6 steps; the only difference is float summation order; gradients averaged by
DistributedDataParallel). Resume: a run stopped after k steps on one process and resumed on two
continues the same loss curve and ends at the same weights.
Processes are spawned by the test (torch.multiprocessing); tiny models; well under a minute.
"""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from minilisten import distributed as D
from minilisten.vqvae import VQVAE

TOL = 1e-5
STEPS = 6
N_ITEMS, T = 40, 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(123)
    motion = torch.randn(N_ITEMS, T, 56, generator=g) * 0.5 + torch.linspace(-1, 1, 56)
    beta = torch.randn(N_ITEMS, 100, generator=g)
    return motion, beta


def _model(preset: str = "naive"):
    torch.manual_seed(0)
    m = VQVAE.from_preset(preset, width=16, code_dim=8, codebook_size=16, id_hidden=8, decay=0.8,
                          dead_threshold=0.5)   # fast decay: unused codes die and are reset within the run
    m.set_motion_stats(torch.zeros(56), torch.ones(56))
    return m.train()   # under a process group, Codebook.forward all-reduces and broadcasts by itself


def train_vq_tiny(global_batch: int, steps: int, state: dict | None = None, grad_accum: int = 1,
                  precision: str = "fp32", preset: str = "naive", optim: str = "adamw", grad_clip: float = 1.0):
    """The training loop the CLI runs, in miniature: the same global batch on every rank (a seeded order
    per epoch), this rank's slice, ScaledStep. Returns (losses, final state)."""
    motion, beta = _data()
    model = _model(preset)
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optim == "sgd" else
           torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99)))
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    step_fn = D.ScaledStep(model, opt, precision=precision, grad_accum=grad_accum, grad_clip=grad_clip)
    losses, resets = [], 0
    for step in range(start, steps):
        e, pos = divmod(step * global_batch, N_ITEMS)
        idx = np.random.default_rng([7, e]).permutation(N_ITEMS)[pos:pos + global_batch]
        micro = global_batch // grad_accum

        def micro_fn(step, k):
            part = idx[k * micro:(k + 1) * micro][D.rank_slice(micro)]
            out = model(motion[part], beta[part])
            return out.loss, {"rec": out.losses["rec"].item()}
        loss, _ = step_fn(step, micro_fn)
        losses.append(float(loss))
        resets += int((model.quantizer.cluster_size == 0.5).sum())   # a reset code's count is set to the threshold
    return losses, {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
                    "torch_rng": torch.get_rng_state(), "step": steps, "resets": resets,
                    "ddp": type(step_fn.ddp).__name__}


def _worker(rank: int, world: int, port: int, out: str, jobs: dict):
    """Run every job of ``jobs`` ({name: kwargs}) in one process group (one spawn for all tests)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)

    def run(env, device):
        res = {}
        for name, job in jobs.items():
            job = dict(job)
            resume = job.pop("resume", None)
            state = torch.load(resume, weights_only=False) if resume else None
            losses, final = train_vq_tiny(job.pop("batch"), job.pop("steps"), state, **job)
            res[name] = {"losses": losses, "state": final}
        # sharded evaluation: each rank sums its shard of 7 items; rows of unequal count gathered
        lo, hi = D.shard_bounds(7, env)
        items = torch.arange(7.0)[lo:hi]
        res["eval"] = D.all_reduce_sums({"sum": float(items.sum()), "n": hi - lo})
        if env.is_main:
            torch.save(res, out)
        return 0
    # launch ends every worker with os._exit (gloo may abort in interpreter finalization otherwise)
    D.launch("cpu", run)


def _spawn(tmp_path, world: int, jobs: dict) -> dict:
    out = str(tmp_path / "results.pt")
    mp.spawn(_worker, args=(world, _free_port(), out, jobs), nprocs=world, join=True)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def resume_state(tmp_path_factory):
    """A 1-process run stopped after 2 steps (its train state on disk)."""
    first_losses, state = train_vq_tiny(8, 2)
    path = tmp_path_factory.mktemp("resume") / "state_at_2.pt"
    torch.save(state, path)
    return first_losses, path


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory, resume_state):
    """All 2-process runs of this file, in one spawn."""
    jobs = {"two": dict(batch=8, steps=STEPS),                         # 2 x 4 = the same global batch of 8
            "in_sgd": dict(batch=8, steps=4, preset="disentangled", optim="sgd", grad_clip=0.0),
            "accum": dict(batch=8, steps=3, grad_accum=2),
            "resumed": dict(batch=8, steps=STEPS, resume=str(resume_state[1])),
            "stopped_at_3": dict(batch=8, steps=3)}
    return _spawn(tmp_path_factory.mktemp("two_procs"), 2, jobs)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single_run():
    """1 process x global batch 8: the reference."""
    return train_vq_tiny(8, STEPS)


def test_two_processes_equal_one_process_with_double_batch(two_procs, single_run):
    """Naive VQ-VAE, AdamW (the trainers' optimizer)."""
    ref_losses, ref = single_run
    two = two_procs["two"]
    assert _max_diff(two["state"]["model"], ref["model"]) < TOL
    for buf in ("embed", "embed_avg", "cluster_size"):               # the codebook itself
        k = f"quantizer.{buf}"
        torch.testing.assert_close(two["state"]["model"][k], ref["model"][k], atol=TOL, rtol=0)
    np.testing.assert_allclose(two["losses"], ref_losses, atol=TOL, rtol=0)
    assert two["state"]["ddp"] == "DistributedDataParallel" and ref["ddp"] == "NoneType"
    assert ref["resets"] > 0 and two["state"]["resets"] == ref["resets"]   # dead-code resets happened, identically
    # the run actually trained and the codebook moved (not a vacuous comparison)
    assert ref_losses[-1] < ref_losses[0]
    assert _max_diff(ref["model"], _model().state_dict()) > 1e-2


def test_two_processes_equal_one_process_instance_norm_model(two_procs):
    """The IN/AdaIN VQ-VAE, compared under SGD. Under Adam it cannot be compared to 1e-5: a conv bias
    that feeds an instance norm has zero gradient in exact arithmetic, Adam divides the rounding noise
    by its own magnitude and moves those (output-irrelevant) biases by ~lr per step in a direction
    set by summation order (measured: 2e-4 after one step at lr 3e-3)."""
    ref_losses, ref = train_vq_tiny(8, 4, preset="disentangled", optim="sgd", grad_clip=0.0)
    two = two_procs["in_sgd"]
    assert _max_diff(two["state"]["model"], ref["model"]) < TOL
    np.testing.assert_allclose(two["losses"], ref_losses, atol=TOL, rtol=0)


def test_grad_accum_and_processes_compose(two_procs):
    """2 processes x 2 micro-batches of 2 = 1 process x 2 micro-batches of 4 (same global order)."""
    ref_losses, ref = train_vq_tiny(8, 3, grad_accum=2)
    two = two_procs["accum"]
    assert _max_diff(two["state"]["model"], ref["model"]) < TOL
    np.testing.assert_allclose(two["losses"], ref_losses, atol=TOL, rtol=0)
    # and accumulation is not a no-op: it differs from one micro-batch of 8 (the codebook sees 2 EMA steps)
    assert _max_diff(ref["model"], train_vq_tiny(8, 3)[1]["model"]) > 1e-4


def test_resume_on_a_different_process_count(two_procs, single_run, resume_state):
    """Stopped after 2 steps on 1 process, resumed on 2: the same loss curve and final weights."""
    ref_losses, ref = single_run
    first_losses = resume_state[0]
    rest = two_procs["resumed"]
    assert len(rest["losses"]) == STEPS - 2
    np.testing.assert_allclose(first_losses + rest["losses"], ref_losses, atol=TOL, rtol=0)
    assert _max_diff(rest["state"]["model"], ref["model"]) < TOL


def test_resume_from_two_processes_on_one(two_procs, single_run):
    """Stopped after 3 steps on 2 processes, resumed on 1."""
    ref_losses, ref = single_run
    stopped = two_procs["stopped_at_3"]
    rest_losses, final = train_vq_tiny(8, STEPS, stopped["state"])
    np.testing.assert_allclose(stopped["losses"] + rest_losses, ref_losses, atol=TOL, rtol=0)
    assert _max_diff(final["model"], ref["model"]) < TOL


def test_sharded_evaluation(two_procs):
    ev = two_procs["eval"]
    assert ev["sum"] == 21.0 and ev["n"] == 7


# ----------------------------------------------------------------------------- pieces, one process
def test_rank_slice_and_shards():
    assert D.rank_slice(8, D.DistEnv(1, 2)) == slice(4, 8)
    with pytest.raises(ValueError, match="--batch-size.*multiple of the number of processes \\(3\\), got 8"):
        D.rank_slice(8, D.DistEnv(0, 3))
    bounds = [D.shard_bounds(7, D.DistEnv(r, 3)) for r in range(3)]
    assert bounds == [(0, 2), (2, 4), (4, 7)]


def test_env_from_os():
    assert D.env_from_os({}) == D.DistEnv(0, 1, 0)
    assert D.env_from_os({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == D.DistEnv(1, 4, 1)
    with pytest.raises(ValueError, match="WORLD_SIZE: expected an integer, got 'x'"):
        D.env_from_os({"WORLD_SIZE": "x"})
    with pytest.raises(ValueError, match="RANK: expected 0 <= RANK < WORLD_SIZE = 2, got 2"):
        D.env_from_os({"WORLD_SIZE": "2", "RANK": "2"})


def test_count_weights_give_the_token_mean():
    # one process, 3 micro-batches with 1, 2, 5 targets: sum_k w_k mean_k / 3 = global mean
    vals = [torch.tensor([1.0]), torch.tensor([2.0, 4.0]), torch.arange(5.0)]
    w = D.count_weights([1, 2, 5])
    got = sum(wk * v.mean() for wk, v in zip(w, vals)) / 3
    assert float(got) == pytest.approx(float(torch.cat(vals).mean()))


def test_precision_and_scaled_step_validation():
    lin = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="--precision: expected one of"):
        D.ScaledStep(lin, opt, precision="fp8")
    with pytest.raises(ValueError, match="--grad-accum: expected a positive int, got 0"):
        D.ScaledStep(lin, opt, grad_accum=0)
    step = D.ScaledStep(lin, opt)
    with pytest.raises(FloatingPointError, match="train: loss became nan at step 3"):
        step(3, lambda s, k: ((lin.weight * float("nan")).sum(), {}))


def test_bf16_autocast_keeps_vq_maths_fp32():
    m = _model("disentangled")
    motion, beta = _data()
    with D.autocast("bf16", "cpu"):
        out = m(motion[:4], beta[:4])
    assert out.losses["embed"].dtype == torch.float32 and m.quantizer.embed.dtype == torch.float32
    assert torch.isfinite(out.loss)


def test_throughput_summary(monkeypatch):
    clock = iter([0.0, 3.0, 3.5, 4.5])   # steps of 3 s (warm-up), 0.5 s, 1 s
    monkeypatch.setattr(D.time, "perf_counter", lambda: next(clock))
    t = D.Throughput("cpu", warmup=1, flops_per_token=10.0)
    t.start()
    for _ in range(3):
        t.step_end(samples=8, tokens=100)
    s = t.summary()
    assert s["steps"] == 3 and s["timed_steps"] == 2 and s["processes"] == 1
    assert s["step_s"] == 0.75 and s["samples_per_s"] == pytest.approx(16 / 1.5)
    assert s["tokens_per_s"] == pytest.approx(200 / 1.5)
    assert "mfu" not in s and s["peak_mem_gb"] > 0      # no MFU on CPU (no known peak)
    assert "0.7500 s/step, 10.7 samples/s, 133 tokens/s" in D.Throughput.format(s)
    monkeypatch.setenv("MINILISTEN_PEAK_TFLOPS", "1e-9")   # 1000 FLOP/s: 10 FLOPs x 133.3 tokens/s = 133%
    assert t.summary()["mfu"] == pytest.approx(10 * 200 / 1.5 / 1000)


# ----------------------------------------------------------------------------- the real CLI under torchrun
VQ_ARGS = ["--corpus", "small", "--segments", "30", "--seconds", "16", "--preset", "naive", "--width", "16",
           "--code-dim", "8", "--codebook-size", "16", "--decay", "0.8", "--dead-threshold", "0.5",
           "--batch-size", "8", "--crop", "64", "--warmup", "2", "--decay-step", "100", "--eval-every", "1",
           "--save-every", "0", "--no-progress"]   # a fixed decay step: its default (2/3 of --steps) moves with --steps
LM_ARGS = ["--stage", "1", "--corpus", "small", "--segments", "30", "--seconds", "16", "--n-layer", "1",
           "--n-embd", "32", "--n-head", "2", "--batch-size", "4", "--window", "96", "--warmup", "1",
           "--eval-every", "1", "--val-windows", "8", "--no-progress"]


def _torchrun(nproc: int, argv: list[str]):
    """``torchrun --standalone --nproc_per_node N -m minilisten ARGV`` (the README's command)."""
    import shutil
    import subprocess
    import sys
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    cmd = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    r = subprocess.run(cmd + ["--standalone", "--nproc_per_node", str(nproc), "-m", "minilisten", *argv],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def _cli(argv: list[str]):
    from minilisten.__main__ import main
    assert main(argv) == 0


def _weights(d) -> dict:
    from safetensors.torch import load_file
    return load_file(str(d / "model.safetensors"))


def _curve(path, key: str) -> list[float]:
    import json
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.suffix == ".jsonl" \
        else json.loads(path.read_text())
    return [r[key] for r in sorted(rows, key=lambda r: r["step"])]


def test_cli_train_vq_torchrun_equals_one_process_and_resumes_on_another_count(tmp_path):
    """``torchrun --nproc_per_node 2 -m minilisten train-vq --batch-size 8`` = ``python -m minilisten
    train-vq --batch-size 8``; a run stopped after 3 steps on 1 process resumes on 2 (same validation
    curve, same final weights and codebook)."""
    one, two, part = tmp_path / "one", tmp_path / "two", tmp_path / "part"
    _cli(["train-vq", *VQ_ARGS, "--steps", "6", "--out", str(one)])
    out = _torchrun(2, ["train-vq", *VQ_ARGS, "--steps", "6", "--out", str(two)])
    assert "2 processes (gloo)" in out and out.count("| none, none |") == 1   # rank 0 alone prints
    a, b = _weights(one), _weights(two)
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < TOL
    np.testing.assert_allclose(_curve(two / "log.jsonl", "rec"), _curve(one / "log.jsonl", "rec"), atol=TOL, rtol=0)
    _cli(["train-vq", *VQ_ARGS, "--steps", "3", "--out", str(part)])
    _torchrun(2, ["train-vq", *VQ_ARGS, "--steps", "6", "--out", str(part), "--resume"])
    c = _weights(part)
    assert max(float((a[k].float() - c[k].float()).abs().max()) for k in a) < TOL
    assert [r for r in _curve(part / "log.jsonl", "step")] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(_curve(part / "log.jsonl", "rec"), _curve(one / "log.jsonl", "rec"), atol=TOL, rtol=0)
    import json
    tp = json.loads((two / "throughput.json").read_text())
    assert tp["processes"] == 2 and tp["samples_per_s"] > 0


def test_cli_train_lm_torchrun_equals_one_process(tmp_path):
    """Stage 1 of the default (LLaMA-layout, dropout-free) LM: 2 processes x 2 windows = 1 x 4, the
    loss a token-weighted mean over the global batch (the ranks hold different token counts)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _cli(["train-lm", *LM_ARGS, "--steps", "4", "--out", str(one)])
    _torchrun(2, ["train-lm", *LM_ARGS, "--steps", "4", "--out", str(two)])
    a, b = _weights(one), _weights(two)
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < TOL
    np.testing.assert_allclose(_curve(two / "log.jsonl", "loss"), _curve(one / "log.jsonl", "loss"),
                               atol=TOL, rtol=0)


def test_fp16_scaler_state_round_trip_and_step():
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.w = w = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.SGD([w], lr=0.1)
    step = D.ScaledStep(holder, opt, precision="fp16", grad_accum=2)
    before = w.detach().clone()
    for s in range(3):
        step(s, lambda s, k: (((w - 1.0) ** 2).mean(), {"k": float(k)}))
    assert not torch.equal(w.detach(), before) and step.skipped == 0
    st = step.scaler.state_dict()
    assert st["scale"] == 65536.0
    other = D.ScaledStep(holder, opt, precision="fp16")
    other.scaler.load_state_dict(dict(st, scale=128.0))
    assert other.scaler.get_scale() == 128.0
