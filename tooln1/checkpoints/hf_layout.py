"""The Hugging Face checkpoint layout: file names, and each HF tensor's place and transpose in ours.

Reading (`tooln1.checkpoints.hf_import`) and writing (`tooln1.checkpoints.hf_export`) share this table, and
neither needs the model class for it, so the model can export itself without an import cycle.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # tooln1.models imports the decoder, which exports through this module
    from tooln1.models.config import ModelConfig

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja",
)
# Buffers some exporters write that carry no parameters.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read as the model it claims to be."""


# -- name and layout mapping ---------------------------------------------------------------
Transform = Callable[[np.ndarray], np.ndarray]


def tensor_map(config: ModelConfig) -> dict[str, tuple[tuple[Any, ...], int | None, Transform, Transform]]:
    """HF tensor name -> (our parameter path, layer index in its stack or None, HF->ours, ours->HF)."""
    c = config
    d, h, kv, hd = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    same = (lambda w: w, lambda w: w)
    transpose = (lambda w: w.T, lambda w: w.T)

    def heads_in(n):  # [n*hd, d] <-> [d, n, hd]
        return (lambda w: w.T.reshape(d, n, hd), lambda w: w.reshape(d, n * hd).T)

    def bias(n):  # [n*hd] <-> [n, hd]
        return (lambda w: w.reshape(n, hd), lambda w: w.reshape(n * hd))

    heads_out = (lambda w: w.T.reshape(h, hd, d), lambda w: w.reshape(h * hd, d).T)  # [d, h*hd] <-> [h, hd, d]
    table = {"model.embed_tokens.weight": (("embed",), None, *same),
             "model.norm.weight": (("final_norm", "weight"), None, *same)}
    if not c.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head",), None, *transpose)
    for i in range(c.num_layers):  # every layer's tensor is slice i of one stacked parameter
        hf = f"model.layers.{i}."
        table[hf + "input_layernorm.weight"] = (("layers", "input_norm", "weight"), i, *same)
        table[hf + "post_attention_layernorm.weight"] = (("layers", "post_attention_norm", "weight"), i, *same)
        for proj, n in (("q", h), ("k", kv), ("v", kv)):
            table[hf + f"self_attn.{proj}_proj.weight"] = (("layers", "attention", f"{proj}_kernel"), i, *heads_in(n))
            if c.qkv_bias:
                table[hf + f"self_attn.{proj}_proj.bias"] = (("layers", "attention", f"{proj}_bias"), i, *bias(n))
        table[hf + "self_attn.o_proj.weight"] = (("layers", "attention", "o_kernel"), i, *heads_out)
        for proj in ("gate", "up", "down"):
            table[hf + f"mlp.{proj}_proj.weight"] = (("layers", "mlp", f"{proj}_kernel"), i, *transpose)
    return table
