"""Short training runs at the paper's sizes: throughput and projected hours (run by bench/train_gpu.sh).

    python bench/train_gpu.py --out bench/results/train_gpu.json                 # 1 GPU
    torchrun --nproc_per_node 4 bench/train_gpu.py --out ...                     # 4 GPUs
    torchrun --nproc_per_node 2 bench/train_gpu.py --cpu-smoke --out ...         # the CPU dry path

VQ-VAE: the paper's model (width 512, d_c 512, K 256, IN/AdaIN) at the paper's global batch (256 crops
of 240 frames; split over the processes), AdamW, the full training step (forward, EMA codebook
update all-reduced over ranks, backward, gradient all-reduce, optimizer). Input: GPU-resident random
motion of the right shape (throughput does not depend on the values).
LM: stage-2 training steps of the real ``ListenerLM`` on a GPT-2 Medium layout (24 layers, 1024 wide,
16 heads, learned positions; randomly initialised, with the synthetic corpus's BPE vocabulary of 1024
words instead of GPT-2's 50257: no weights can be downloaded), batch 8 windows of 240 frames (the
paper's), sequences built from the synthetic corpus with random LR codes.
Projected hours = median step time x the paper's iterations (VQ 300K; LM 260K = 60K stage 1 + 200K
stage 2, all timed as stage 2) / 3600, at the same global batch.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # a source checkout without install

from minilisten import distributed as D  # noqa: E402

PAPER = {"vq_steps": 300_000, "lm_steps": 260_000, "vq_batch": 256, "lm_batch": 8}


def _log(*a):
    if D.is_main():
        print(*a, flush=True)


def bench_vq(a, env, device, prec) -> dict:
    from minilisten.vqvae import VQVAE
    torch.manual_seed(0)
    model = VQVAE.from_preset("disentangled", width=a.vq_width, code_dim=a.vq_width, codebook_size=256).to(device)
    model.train()   # the codebook all-reduces its EMA statistics under a process group by itself
    if a.compile:   # as train-vq --compile
        model.encoder.compile()
        model.decoder.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    g = torch.Generator(device=device).manual_seed(0)
    pool = torch.randn(a.vq_pool, a.crop, 56, device=device, generator=g)
    beta = torch.randn(a.vq_pool, 100, device=device, generator=g)
    step = D.ScaledStep(model, opt, precision=prec, grad_accum=a.grad_accum, device=device)
    n_params = sum(p.numel() for p in model.parameters())
    meter = D.Throughput(device, env, warmup=a.warmup)
    B = a.vq_batch
    sl = D.rank_slice(B // a.grad_accum, env, "--vq-batch / --grad-accum")
    meter.start()
    for s in range(a.warmup + a.steps):
        idx = torch.randint(0, a.vq_pool, (B,), device=device, generator=g)   # same global batch on every rank
        m = B // a.grad_accum

        def micro(s, k):
            j = idx[k * m:(k + 1) * m][sl]
            out = model(pool[j], beta[j])
            return out.loss, {"rec": out.losses["rec"].detach()}
        loss, _ = step(s, micro)
        meter.step_end(samples=B)
    r = meter.summary()
    r.update(params=n_params, global_batch=B, crop=a.crop, width=a.vq_width, final_loss=float(loss),
             paper_sizes=(B, a.vq_width, a.crop) == (PAPER["vq_batch"], 512, 240))
    if "step_s" in r and not a.cpu_smoke:
        r["projected_hours_paper"] = r["step_s"] * PAPER["vq_steps"] / 3600
    return r


def _lm_pool(a):
    from minilisten.data.synthetic import named_corpus
    from minilisten.lm import ListenerLM, LMConfig, default_backbone
    from minilisten.train_lm import corpus_words
    ds = named_corpus("small", n_segments=30, seconds=max(16.0, a.window / 30 + 1))
    bb, tok = default_backbone(corpus_words(ds.train), n_layer=a.lm_layers, n_embd=a.lm_width, n_head=a.lm_heads,
                               arch="gpt2", seed=0)
    model = ListenerLM(bb, tok, LMConfig(n_lr=256))
    rng = np.random.default_rng(0)
    seqs = []
    for s in ds.train:
        for s0 in range(0, s.T - a.window + 1, a.window):
            seqs += model.build_sequences(s.window(s0, a.window), rng.integers(0, 256, a.window // 8))
    return model, seqs


def bench_lm(a, env, device, prec) -> dict:
    from minilisten.tokens import collate
    torch.manual_seed(0)
    model, seqs = _lm_pool(a)
    model.to(device).train()
    if a.grad_checkpointing:   # as train-lm --grad-checkpointing / --compile
        model.enable_gradient_checkpointing()
    if a.compile:
        model.compile_transformer()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, betas=(0.5, 0.99), weight_decay=0.01)
    base = model._base() if hasattr(model, "_base") else model.backbone
    cfg = base.config
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wte" not in n and "wpe" not in n)
    seq_len = int(np.mean([len(q.ids) for q in seqs]))
    fpt = 6.0 * n_matmul + 12.0 * cfg.n_layer * cfg.n_embd * seq_len   # the PaLM appendix estimate
    step = D.ScaledStep(model, opt, precision=prec, grad_accum=a.grad_accum, grad_clip=1.0, device=device)
    meter = D.Throughput(device, env, warmup=a.warmup, flops_per_token=fpt)
    B = a.lm_batch
    m = B // a.grad_accum
    sl = D.rank_slice(m, env, "--lm-batch / --grad-accum")
    rng = np.random.default_rng(1)
    meter.start()
    for s in range(a.warmup + a.steps):
        pick = rng.integers(0, len(seqs), B)
        batches = [collate([seqs[i] for i in pick[k * m:(k + 1) * m][sl]], model.vocab.pad)
                   for k in range(a.grad_accum)]
        counts = [int((b["targets"] != -100).sum()) for b in batches]
        w = D.count_weights(counts, env)
        tokens = D.all_reduce_sums({"t": sum(int(b["attention_mask"].sum()) for b in batches)}, env)["t"]

        def micro(s, k):
            loss, st = model.loss(batches[k], 2, 0.5, torch.Generator().manual_seed(s * 64 + env.rank))
            return loss * w[k], {}
        loss, _ = step(s, micro)
        meter.step_end(samples=B, tokens=tokens)
    r = meter.summary()
    r.update(params=sum(p.numel() for p in model.parameters()), matmul_params=n_matmul, global_batch=B,
             mean_seq_len=seq_len, layers=cfg.n_layer, width=cfg.n_embd, flops_per_token=fpt, final_loss=float(loss),
             paper_sizes=(B, cfg.n_layer, cfg.n_embd, a.window) == (PAPER["lm_batch"], 24, 1024, 240))
    if "step_s" in r and not a.cpu_smoke:
        r["projected_hours_paper"] = r["step_s"] * PAPER["lm_steps"] / 3600
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", default="vq,lm", help="comma list of vq, lm (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    p.add_argument("--precision", choices=D.PRECISIONS, default="bf16")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true", help="as train-vq/train-lm --compile (warm-up steps compile)")
    p.add_argument("--grad-checkpointing", action="store_true", help="LM: as train-lm --grad-checkpointing")
    p.add_argument("--vq-batch", type=int, default=PAPER["vq_batch"])
    p.add_argument("--vq-width", type=int, default=512)
    p.add_argument("--vq-pool", type=int, default=1024, help="random crops held on the device")
    p.add_argument("--crop", type=int, default=240)
    p.add_argument("--lm-batch", type=int, default=PAPER["lm_batch"])
    p.add_argument("--lm-layers", type=int, default=24)
    p.add_argument("--lm-width", type=int, default=1024)
    p.add_argument("--lm-heads", type=int, default=16)
    p.add_argument("--window", type=int, default=240)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny sizes on CPU (gloo): checks the script, measures nothing about GPUs")
    p.add_argument("--out", required=True, help="JSON file to write (rank 0)")
    a = p.parse_args(argv)
    if a.cpu_smoke:
        a.device, a.precision = "cpu", "fp32"
        a.vq_batch, a.vq_width, a.vq_pool, a.crop = 8, 16, 32, 64
        a.lm_batch, a.lm_layers, a.lm_width, a.lm_heads, a.window = 4, 1, 32, 2, 96
        a.steps, a.warmup = min(a.steps, 3), min(a.warmup, 1)
        torch.set_num_threads(1)
    return D.launch(a.device, lambda env, device: _run(a, env, device))


def _run(a, env, device) -> int:
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "torch": torch.__version__,
           "python": platform.python_version(), "processes": env.world_size, "precision": a.precision,
           "grad_accum": a.grad_accum, "compile": a.compile, "grad_checkpointing": a.grad_checkpointing,
           "cpu_smoke": a.cpu_smoke, "paper_schedule": PAPER,
           "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"}
    for what in a.what.split(","):
        t0 = time.perf_counter()
        if what == "vq":
            res["vq"] = bench_vq(a, env, device, a.precision)
        elif what == "lm":
            res["lm"] = bench_lm(a, env, device, a.precision)
        else:
            raise ValueError(f"--what: expected a comma list of vq, lm, got {what!r}")
        res[what]["wall_s"] = time.perf_counter() - t0
        h = res[what].get("projected_hours_paper")
        _log(f"[{what}] {D.Throughput.format(res[what])}; "
             + (f"projected {h:.1f} h for the paper's schedule"
                + ("" if res[what]["paper_sizes"] else " (at these sizes, not the paper's)")
                if h is not None else "smoke sizes: no projection"))
    if env.is_main:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
