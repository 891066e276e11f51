"""minilisten: LLM-driven multimodal, multi-identity listening head generation.

The top-level ``kernels/`` directory is installed as the subpackage ``minilisten.kernels``; imported from a
checkout's root under the name ``kernels`` (Hugging Face's package, which transformers >= 5.25 imports),
it steps aside (kernels/__init__.py).
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
        "transformers>=5.25",   # the HF cache argument is named `cache`
        "numpy>=1.24",
        "scipy>=1.10",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "tqdm>=4.60",
        "dtaidistance>=2.3",   # DTW (tslearn's definition, C implementation) for the REACT metrics
    ],
    extras_require={
        # Pillow >= 10.1: render's text (ImageFont.load_default(size=...)); peft: LoRA; ruff: the linter CI runs
        "test": ["pytest>=7", "hypothesis>=6", "matplotlib>=3.6", "Pillow>=10.1", "websockets>=13", "peft>=0.10",
                 "imageio-ffmpeg>=0.4", "ruff>=0.6"],
        "plot": ["matplotlib>=3.6", "Pillow>=10.1", "imageio-ffmpeg>=0.4"],   # plots and the demo's clip.mp4
        "lora": ["peft>=0.10"],
        "audio": ["soundfile>=0.12"],
        "serve": ["websockets>=13"],
        "video": ["Pillow>=10.1", "imageio-ffmpeg>=0.4"],
    },
    entry_points={"console_scripts": ["minilisten=minilisten.__main__:main"]},
)
