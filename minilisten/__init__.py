"""minilisten: listener head motion from multimodal speaker input (Lai et al., CVPR 2025).

``import minilisten`` is cheap: the models load on first use of their names.

- ``minilisten.VQVAE``: identity-disentangled motion tokenizer (``minilisten.vqvae``)
- ``minilisten.ListenerLM``: multimodal causal LM over speaker + LR tokens (``minilisten.lm``)
- ``minilisten.Generator``: fast static-cache greedy LR decoding (``minilisten.generate``)
- ``minilisten.StreamingListener``: chunk-by-chunk listener motion (``minilisten.streaming``)
- ``minilisten.StreamingARIG``: the ARIG-style continuous listener, frame by frame (``minilisten.arig``)
- ``minilisten.ListenerStream``: the protocol both streams implement (``push``/``flush``/``reset``/``set_beta``)
- ``minilisten.data``: ``Segment``, ``synthetic_corpus``, peer-format readers
- ``minilisten.metrics``, ``minilisten.baselines``, ``minilisten.kernels``
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "VQVAE": "minilisten.vqvae", "VQConfig": "minilisten.vqvae",
    "ListenerLM": "minilisten.lm", "Vocab": "minilisten.lm",
    "Generator": "minilisten.generate",
    "StreamingListener": "minilisten.streaming", "ListenerStream": "minilisten.streaming",
    "StreamingARIG": "minilisten.arig",
    "Segment": "minilisten.data", "Word": "minilisten.data", "synthetic_corpus": "minilisten.data",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minilisten' has no attribute {name!r}")
