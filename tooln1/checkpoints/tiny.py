"""Tiny random checkpoints in the real HF layout, for the quickstart, tests and benchmarks.

No machine here reaches the Hugging Face hub, so tests build small random Qwen2 / Llama checkpoints
with ``transformers`` itself (``Qwen2ForCausalLM`` / ``LlamaForCausalLM``, torch seeded) and the
small byte-level BPE tokenizer shipped in ``tooln1/assets/tiny_tokenizer`` (Qwen2.5-Instruct chat
template, ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` special tokens, ``<tool_call>`` and
``</tool_call>`` ordinary added tokens). The layout is what ``from_pretrained`` on a real Qwen2.5
directory sees::

    config.json  generation_config.json  model.safetensors | model-0000k-of-0000n.safetensors
    model.safetensors.index.json (sharded)  tokenizer.json  tokenizer_config.json  vocab.json  merges.txt

    >>> from tooln1.checkpoints.tiny import make_tiny_checkpoint
    >>> path = make_tiny_checkpoint("/tmp/tiny")                   # 2-layer Qwen2, tied, fp32
    >>> path = make_tiny_checkpoint("/tmp/tiny-llama", arch="llama", shard_size="100KB")
    >>> path = make_tiny_checkpoint("/tmp/q05", shape="qwen2.5-0.5b", dtype="bfloat16")

``tools/make_tiny_checkpoint.py`` is the command-line front end.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

from flax import nnx

from tooln1.checkpoints.hf_export import parse_size
from tooln1.models import CausalLM, ModelConfig

TINY_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                  "tiny_tokenizer")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

# Named shapes. ``vocab_size`` None means "the tiny tokenizer's size".
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab_size=None),
    # Qwen2.5-0.5B's exact hyper-parameters (docs/design.md §4) with the real vocabulary size, so compute and
    # memory match the real model; the tokenizer is still the tiny one (ids < its size are used).
    "qwen2.5-0.5b": dict(arch="qwen2", layers=24, hidden=896, heads=14, kv_heads=2, intermediate=4864,
                         vocab_size=151936, tied=True, rope_theta=1e6),
    "qwen2.5-1.5b": dict(arch="qwen2", layers=28, hidden=1536, heads=12, kv_heads=2, intermediate=8960,
                         vocab_size=151936, tied=True, rope_theta=1e6),
    "qwen2.5-7b": dict(arch="qwen2", layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944,
                       vocab_size=152064, tied=False, rope_theta=1e6),
}


def tiny_tokenizer_path() -> str:
    """Directory of the committed tiny tokenizer (loadable by ``AutoTokenizer.from_pretrained``)."""
    return TINY_TOKENIZER_DIR


def load_tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def special_token_ids() -> dict[str, int]:
    """Ids of the tiny tokenizer's added tokens, read from its tokenizer.json."""
    with open(os.path.join(TINY_TOKENIZER_DIR, "tokenizer.json"), encoding="utf-8") as f:
        spec = json.load(f)
    return {t["content"]: t["id"] for t in spec["added_tokens"]}


def make_tiny_checkpoint(
    out_dir: str,
    *,
    arch: str = "qwen2",
    shape: str | None = None,
    layers: int | None = None,
    hidden: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    vocab_size: int | None = None,
    tied: bool | None = None,
    rope_theta: float | None = None,
    max_position_embeddings: int = 4096,
    init_std: float = 0.02,
    nonzero_biases: bool = False,
    random_norms: bool = False,
    seed: int = 0,
    shard_size: int | str | None = None,
    dtype: str = "float32",
    overwrite: bool = True,
) -> str:
    """Write a random ``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` checkpoint in the HF layout.

    Args:
      out_dir: target directory (created; replaced when ``overwrite``).
      arch: ``"qwen2"`` (q/k/v bias, theta 1e6, tied by default) or ``"llama"`` (no bias, theta 5e5,
        untied by default).
      shape: a name from ``SHAPES`` (``"tiny"`` default, ``"qwen2.5-0.5b"``, ...); explicit
        ``layers``/``hidden``/... override it.
      init_std: ``initializer_range`` used by transformers' init (normal(0, std) weights).
      nonzero_biases: Qwen2 initialises the q/k/v biases to zero; this draws them normal(0, 0.1)
        so tests notice a missing or misplaced bias.
      random_norms: RMSNorm weights 1 + normal(0, 0.1) instead of ones.
      seed: torch seed; same arguments and seed -> bit-identical weights.
      shard_size: e.g. ``"200KB"`` or bytes: write sharded safetensors + ``model.safetensors.index.json``.
      dtype: ``"float32"`` | ``"bfloat16"`` | ``"float16"`` storage dtype.
    Returns: ``out_dir``.
    """
    import torch
    import transformers

    if arch not in ("qwen2", "llama"):
        raise ValueError(f"arch must be 'qwen2' or 'llama', got {arch!r}")
    base = dict(SHAPES["tiny"])
    if shape is not None:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
        base.update(SHAPES[shape])
        arch = base.pop("arch", arch)
    for k, v in dict(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                     intermediate=intermediate, vocab_size=vocab_size, tied=tied,
                     rope_theta=rope_theta).items():
        if v is not None:
            base[k] = v
    if base.get("tied") is None:
        base["tied"] = arch == "qwen2"
    if base.get("rope_theta") is None:
        base["rope_theta"] = 1e6 if arch == "qwen2" else 5e5

    ids = special_token_ids()
    pad_id, im_end_id = ids["<|endoftext|>"], ids["<|im_end|>"]
    n_tok = max(ids.values()) + 1
    vocab = base["vocab_size"] or n_tok
    if vocab < n_tok:
        raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer ({n_tok} tokens)")
    if base["hidden"] % base["heads"] or base["heads"] % base["kv_heads"]:
        raise ValueError("hidden must be divisible by heads and heads by kv_heads")

    common = dict(
        vocab_size=vocab,
        hidden_size=base["hidden"],
        intermediate_size=base["intermediate"],
        num_hidden_layers=base["layers"],
        num_attention_heads=base["heads"],
        num_key_value_heads=base["kv_heads"],
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        rms_norm_eps=1e-6,
        tie_word_embeddings=bool(base["tied"]),
        rope_parameters={"rope_type": "default", "rope_theta": float(base["rope_theta"])},
        bos_token_id=pad_id,
        eos_token_id=im_end_id,
        pad_token_id=pad_id,
    )
    if arch == "qwen2":
        config = transformers.Qwen2Config(use_sliding_window=False, **common)
        model_cls = transformers.Qwen2ForCausalLM
    else:
        config = transformers.LlamaConfig(attention_bias=False, mlp_bias=False,
                                          head_dim=base["hidden"] // base["heads"], **common)
        model_cls = transformers.LlamaForCausalLM

    torch.manual_seed(seed)
    model = model_cls(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if nonzero_biases and name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            if random_norms and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = model.to(torch_dtype)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=pad_id, pad_token_id=pad_id, eos_token_id=[im_end_id, pad_id])

    if os.path.exists(out_dir) and overwrite:
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    kw = {}
    if shard_size is not None:
        kw["max_shard_size"] = parse_size(shard_size)
    model.save_pretrained(out_dir, safe_serialization=True, **kw)
    for fname in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(TINY_TOKENIZER_DIR, fname), os.path.join(out_dir, fname))

    # Real Qwen2.5 / Llama-3 config.json files carry ``rope_theta`` at top level (transformers 5
    # writes ``rope_parameters``); keep both so loaders written against either layout work.
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.setdefault("rope_theta", float(base["rope_theta"]))
    cfg.setdefault("torch_dtype", dtype)
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return out_dir



def make_random_checkpoint(
    out_dir: str,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    tied: bool = True,
) -> str:
    """A tiny random Qwen2 checkpoint written by tooln1 itself, without torch.

    The quickstart runs after a plain ``pip install -e .`` (no torch), so it cannot use
    `make_tiny_checkpoint`; this one initialises a `CausalLM` in JAX and exports it with
    `save_pretrained`, giving the same HF layout with the tiny tokenizer.
    """
    ids = special_token_ids()
    pad_id, im_end_id = ids["<|endoftext|>"], ids["<|im_end|>"]
    config = ModelConfig(vocab_size=max(ids.values()) + 1, hidden_size=hidden, intermediate_size=intermediate,
                         num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                         tie_word_embeddings=tied, max_position_embeddings=4096)
    model = CausalLM(config, rngs=nnx.Rngs(seed))
    model.source_dir = TINY_TOKENIZER_DIR  # export copies the tokenizer files from here
    model.save_pretrained(out_dir)
    tokens = dict(bos_token_id=pad_id, eos_token_id=im_end_id, pad_token_id=pad_id)
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
        hf_config = json.load(f)
    hf_config.update(tokens)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({**tokens, "eos_token_id": [im_end_id, pad_id]}, f, indent=2)
    return out_dir

__all__ = ["make_random_checkpoint", "make_tiny_checkpoint", "tiny_tokenizer_path", "load_tiny_tokenizer",
           "special_token_ids", "SHAPES", "TINY_TOKENIZER_DIR"]
