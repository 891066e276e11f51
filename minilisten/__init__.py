"""minilisten: listener head motion from multimodal speaker input (Lai et al., CVPR 2025).

``import minilisten`` is cheap: the names below load their module on first use.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "VQVAE": "minilisten.vqvae", "VQConfig": "minilisten.vqvae",
    "ListenerLM": "minilisten.lm", "Vocab": "minilisten.lm",
    "Generator": "minilisten.generate", "Sampling": "minilisten.generate",
    "ListenerStream": "minilisten.streaming", "StreamingListener": "minilisten.streaming",
    "StreamingARIG": "minilisten.streaming",
    "Segment": "minilisten.data", "Word": "minilisten.data", "synthetic_corpus": "minilisten.data",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minilisten' has no attribute {name!r}")
