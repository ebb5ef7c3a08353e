"""Analytic FLOPs of the model's programs, the one set of formulas MFU, tooln1-fit and the benchmarks use.

A forward costs 2·(matmul params) per token plus QKᵀ and AV attention against its context (causal
masking ignored, as the dense kernels compute it). The embedding lookup is free; a tied head is a matmul.
"""
from __future__ import annotations

from typing import Any

from tooln1.models.decoder import count_params


def non_embedding_params(config: Any) -> int:
    n = count_params(config) - config.vocab_size * config.hidden_size
    return n + (config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0)


def forward_flops(config: Any, tokens: float, context: float) -> float:
    """``tokens`` positions, each attending to ``context`` keys."""
    attention = 4 * config.num_layers * config.num_heads * config.head_dim * context
    return tokens * (2 * non_embedding_params(config) + attention)


def train_passes(config: Any) -> float:
    """Forward + backward in forward-pass units: 3, less the backward of ``frozen_layers`` blocks; 2 with
    adapters, whose frozen kernels need the activations' gradient but not their own (the adapters'
    small matmuls are not counted)."""
    if getattr(config, "lora_rank", 0):
        return 2.0
    frozen = getattr(config, "frozen_layers", 0)
    return 1 + 2 * (config.num_layers - frozen) / config.num_layers


def projection_dims(config: Any) -> dict[str, tuple[int, int]]:
    """(inputs, outputs) of each of a block's projections (LoRA's targets, a quantized base's kernels)."""
    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return {"q": (c.hidden_size, q), "k": (c.hidden_size, kv), "v": (c.hidden_size, kv), "o": (q, c.hidden_size),
            "gate": (c.hidden_size, c.intermediate_size), "up": (c.hidden_size, c.intermediate_size),
            "down": (c.intermediate_size, c.hidden_size)}


def trained_params(config: Any) -> int:
    """The params an update computes gradients and AdamW moments for: the adapters with LoRA, else all
    (`frozen_layers` zeroes updates after AdamW, which still keeps every param's moments)."""
    if not getattr(config, "lora_rank", 0):
        return count_params(config)
    dims = projection_dims(config)
    return config.num_layers * config.lora_rank * sum(sum(dims[t]) for t in config.lora_targets)


def update_flops(config: Any, rows: int, prompt_len: int, response_len: int, *, old_logprobs: bool = True,
                 reference: bool = True, rows_per_prompt: int = 1, packed_length: int = 0) -> float:
    """One GRPO update over ``rows`` responses: the old (``old_logprobs``) and reference
    (``reference``) log-prob forwards plus the training forward + backward. ``rows_per_prompt`` G > 1:
    G responses share one packed row ``[prompt, response_1 … response_G]`` (``share_prompt``) of
    ``packed_length`` response tokens (0: G × ``response_len``)."""
    g = rows_per_prompt
    seq = prompt_len + ((packed_length or g * response_len) if g > 1 else response_len)
    forward = forward_flops(config, rows // g * seq, seq)
    return (int(old_logprobs) + int(reference) + train_passes(config)) * forward


def sft_flops(config: Any, rows: int, seq_len: int) -> float:
    return train_passes(config) * forward_flops(config, rows * seq_len, seq_len)


def prefill_flops(config: Any, batch: int, prompt: int) -> float:
    """A rollout's prompts, each prefilled once (the LM head runs for the decode steps only)."""
    head = config.hidden_size * config.vocab_size
    return forward_flops(config, batch * prompt, prompt) - 2 * head * batch * prompt


def decode_flops(config: Any, batch: int, group: int, prompt: int, response: int) -> float:
    """A rollout's decode steps: ``group`` samples of ``response`` tokens per prompt."""
    return forward_flops(config, batch * group * response, prompt + response / 2)


__all__ = ["decode_flops", "forward_flops", "non_embedding_params", "prefill_flops", "projection_dims", "sft_flops",
           "train_passes", "trained_params", "update_flops"]
