"""minilisten: LLM-driven multimodal, multi-identity listening head generation.

The top-level ``kernels/`` directory is installed as the subpackage ``minilisten.kernels``
(a top-level package called ``kernels`` would clash with Hugging Face's ``kernels``, which
transformers >= 5.25 depends on; imported under that name from a checkout, ours steps aside).
"""
from setuptools import setup

setup(
    name="minilisten",
    version="0.1.0",
    description="Listener head motion (3DMM expression + pose) from multimodal speaker input "
    "(Lai et al., CVPR 2025): identity-disentangled VQ-VAE + multimodal causal LM.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["minilisten", "minilisten.data", "minilisten.kernels"],
    package_dir={"minilisten": "minilisten", "minilisten.kernels": "kernels"},
    package_data={"minilisten": ["web/*.html"]},   # the serve command's web page
    install_requires=[
        # <2.14: on machines whose pip index serves a local CPU build of 2.13 (our CI), a wider range
        # would pull a multi-GB CUDA build. Widen it freely on a GPU machine.
        "torch>=2.4,<2.14",
        "triton>=3.0",
        # transformers >= 5.25 imports Hugging Face's `kernels` package; from a checkout's root our
        # kernels/ directory would shadow it, so kernels/__init__.py steps aside for it (tested).
        "transformers>=4.46",
        "numpy>=1.24",
        "scipy>=1.10",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "matplotlib>=3.6", "websockets>=13", "peft>=0.10", "imageio-ffmpeg>=0.4",
                 "ruff>=0.6"],   # peft: the LoRA tests; ruff: the linter CI runs
        "plot": ["matplotlib>=3.6", "imageio-ffmpeg>=0.4"],   # plots and the demo's clip.mp4
        "lora": ["peft>=0.10"],
        "audio": ["soundfile>=0.12"],
        "serve": ["websockets>=13"],
        "video": ["imageio-ffmpeg>=0.4"],
        "all": ["matplotlib>=3.6", "peft>=0.10", "soundfile>=0.12", "pytest>=7", "hypothesis>=6", "websockets>=13", "imageio-ffmpeg>=0.4"],
    },
    entry_points={"console_scripts": ["minilisten=minilisten.__main__:main"]},
)
