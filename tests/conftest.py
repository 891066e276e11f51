"""Shared pytest setup.

Triton kernels run through the Triton interpreter on CPU-only machines: ``TRITON_INTERPRET=1`` must
be set before anything imports triton, so it is set here, first. On a CUDA machine (or with
``MINILISTEN_GPU_TESTS=1``, as ``bench/gpu_check.sh`` sets) it is left alone so the real compiled
kernels run. ``torch.cuda.is_available()`` does not import triton.
"""
import os

import torch

if os.environ.get("MINILISTEN_GPU_TESTS") != "1" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Model tests (VQ-VAE, demo, ...) use the torch reference on CPU: the interpreter is ~100x
    # slower. Kernel tests ask for the Triton path explicitly (use_triton=True).
    os.environ.setdefault("MINILISTEN_KERNELS", "torch")

torch.set_num_threads(1)  # 2 threads on a loaded 2-core box was 10-50x slower in our measurements


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "compile: uses torch.compile (deselect with -m 'not compile')")


# ----------------------------------------------------------------------------- shared tiny builders
# Used by several test modules: ``from conftest import tiny_lm, tiny_vq, chunks, emotion_probs``.
_TOKENIZER = []


def emotion_probs(T, cls, strength=0.9):
    """``(T, 8)`` float32 emotion probabilities: ``strength`` on class ``cls[t]`` (int or (T,)), the rest spread."""
    import numpy as np
    p = np.full((T, 8), (1 - strength) / 7, np.float32)
    p[np.arange(T), cls] = strength
    return p


def word_tokenizer():
    """A small BPE tokenizer over the benchmark's words (built once)."""
    if not _TOKENIZER:
        from minilisten.bench import WORDS
        from minilisten.lm import train_word_tokenizer
        _TOKENIZER.append(train_word_tokenizer(list(WORDS) * 3, vocab_size=300))
    return _TOKENIZER[0]


def tiny_lm(arch: str = "gpt2", max_len: int = 0, n_positions: int = 256, seed: int = 0, **cfg):
    """A random tiny ``ListenerLM`` in eval mode: GPT-2 (2 layers, 32 wide), LLaMA (GQA 4/2 heads,
    SwiGLU, rotary) or GPT-NeoX (no fast path: the generic HF decoder). ``cfg`` goes to LMConfig."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from minilisten.lm import ListenerLM, LMConfig
    tok = word_tokenizer()
    torch.manual_seed(seed)
    if arch == "gpt2":
        bb = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=n_positions,
                                        initializer_range=0.2))
    elif arch == "neox":
        bb = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64,
                                              max_position_embeddings=n_positions, initializer_range=0.2))
    else:
        bb = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                          max_position_embeddings=n_positions, initializer_range=0.2))
    lm = ListenerLM(bb, tok, LMConfig(max_len=max_len, **cfg))
    torch.nn.init.normal_(lm.lr_head.weight, std=0.5)   # spread the logits: no near-ties in argmax
    return lm.eval()


def tiny_vq(dec_norm: str = "adaln", seed: int = 0, **cfg):
    """A random tiny VQ-VAE in eval mode (IN encoder, ``dec_norm`` decoder, random codebook,
    AdaLN/AdaIN affine maps with visible effect); ``cfg`` goes to VQConfig."""
    from minilisten.vqvae import VQVAE, VQConfig
    torch.manual_seed(seed)
    vq = VQVAE(VQConfig(enc_norm="in", dec_norm=dec_norm, width=32, code_dim=16, id_hidden=16, **cfg))
    vq.set_codebook(torch.randn(vq.config.codebook_size, vq.config.code_dim))
    for m in vq.decoder.modules():
        if hasattr(m, "to_affine"):
            torch.nn.init.normal_(m.to_affine.weight, std=0.3)
    return vq.eval()


def chunks(seg, seed=0, max_frames=20, sa_lag=0.0):
    """Split a Segment into StreamingListener pushes of random sizes: frames + emotion, the words
    ending in them, the SA tokens up to (clock - sa_lag)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    f, sa_done, out = 0, 0, []
    while f < seg.T:
        n = int(min(seg.T - f, rng.integers(1, max_frames + 1)))
        t0, t1 = f / seg.fps, (f + n) / seg.fps
        words = [w for w in seg.words if t0 < w.end <= t1 + 1e-9]
        sa_to = seg.sa_tokens.size if f + n == seg.T else max(sa_done, int((t1 - sa_lag) * 50))
        out.append(dict(words=words, sa_tokens=seg.sa_tokens[sa_done:sa_to], emotion=seg.emotion[f:f + n]))
        sa_done, f = sa_to, f + n
    return out
