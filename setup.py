"""tooln1: Tool-N1 (GRPO tool-calling RL) in JAX/Flax."""
from setuptools import find_namespace_packages, setup

setup(
    name="tooln1",
    version="0.1.0",
    description="JAX/Flax reimplementation of Nemotron-Research-Tool-N1: GRPO for tool-calling LLMs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["tooln1", "tooln1.*"]),  # namespace: assets/ is data, not code
    package_data={"tooln1": ["assets/**/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.6",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "transformers>=4.51",
        "datasets>=3.0",
        "numpy>=1.26",
        "ml-collections>=1.0",
        "tensorboardX>=2.6",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "jinja2>=3.1",  # transformers renders chat templates with it but does not require it
        "matplotlib>=3.8",  # every training run plots curves.png; tooln1-eval plots accuracy.png
        "gguf>=0.17",  # llama.cpp GGUF files: tooln1.load_model("x.gguf"), tooln1-convert (numpy only, no torch)
    ],
    extras_require={
        # torch: install the pinned CPU wheel first (`pip install torch==2.13.0`), see README.
        "test": ["pytest>=8", "hypothesis>=6.100", "torch", "ruff==0.17.6",  # ruff: `ruff check .` (ruff.toml), as .ci/run does
                 "accelerate",  # transformers' own GGUF loading (the reference in tests/test_gguf.py) needs it
                 "peft"],  # loads our LoRA adapter export onto the transformers base (tests/test_lora.py)
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],  # also what tooln1-fit needs to compile for TPU targets on a CPU machine
    },
    entry_points={
        "console_scripts": [
            "tooln1-train=tooln1.cli:main",
            "tooln1-eval=tooln1.eval.cli:main",
            "tooln1-convert=tooln1.checkpoints.hf_import:main",
            "tooln1-fit=tooln1.preflight.fit:main",
        ]
    },
)
