"""Activation-memory estimate at the paper's sizes (CPU is enough), without and with --grad-checkpointing: bytes of
the tensors autograd saves for backward in one training forward (``torch.autograd.graph.saved_tensors_hooks``,
each storage counted once), at a small batch, scaled linearly to the paper's batch. fp32; the LM on CPU's attention path
(which keeps the attention matrix), so an upper bound for bf16 with fused attention on a GPU.

    OMP_NUM_THREADS=1 MINILISTEN_KERNELS=torch python bench/activation_memory.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))          # train_gpu
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # a source checkout without install
from minilisten.vqvae import VQVAE  # noqa: E402


def saved_bytes(fn):
    seen, tot = set(), [0]
    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            tot[0] += t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    return tot[0], loss

torch.manual_seed(0)
vq = VQVAE.from_preset("disentangled").train()   # paper: width 512, d_c 512, K 256
n = sum(p.numel() for p in vq.parameters())
B = 8
x, b = torch.randn(B, 240, 56), torch.randn(B, 100)
by, _ = saved_bytes(lambda: vq(x, b).loss)
print(f"VQ params {n/1e6:.2f}M; saved activations batch {B}: {by/2**30:.3f} GiB -> batch 256: {by*256/B/2**30:.1f} GiB")

from types import SimpleNamespace  # noqa: E402

import train_gpu  # noqa: E402

model, seqs = train_gpu._lm_pool(SimpleNamespace(window=240, lm_layers=24, lm_width=1024, lm_heads=16))
model.train()
from minilisten.tokens import collate  # noqa: E402

batch = collate(seqs[:1], model.vocab.pad)
n = sum(p.numel() for p in model.parameters())
by, _ = saved_bytes(lambda: model.loss(batch, 2)[0])
L = len(seqs[0].ids)
print(f"LM params {n/1e6:.1f}M; seq len {L}; saved activations batch 1: {by/2**30:.3f} GiB -> "
      f"batch 8: {8*by/2**30:.1f} GiB")

# --grad-checkpointing (train-lm): the forward keeps only each layer's input; backward recomputes one
# layer at a time, so the peak is about that plus one layer's activations (plain / n_layer)
model.enable_gradient_checkpointing()
by_ck, _ = saved_bytes(lambda: model.loss(batch, 2)[0])
layer = by / model.backbone.config.num_hidden_layers
print(f"LM with --grad-checkpointing: saved in the forward batch 1: {by_ck/2**30:.3f} GiB (+ one layer recomputed in "
      f"backward ~{layer/2**30:.3f} GiB) -> batch 8: ~{8*(by_ck + layer)/2**30:.1f} GiB "
      f"({(by_ck + layer) / by:.2f}x the plain forward's)")
