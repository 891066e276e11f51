"""minilisten: listener head motion from multimodal speaker input (Lai et al., CVPR 2025)."""
__version__ = "0.1.0"
