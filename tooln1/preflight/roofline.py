"""A roofline for the programs of a GRPO step: the FLOPs and HBM bytes each must spend, and the time
each implies on a target's peak FLOP/s and HBM bandwidth, so a measured time has something to be
compared with.

FLOPs are global (:mod:`tooln1.models.flops`) and run on every device: compute time is
``flops / (devices · peak_flops)``. Bytes are per device, over a mesh of ``devices`` with weights split
over ``tensor`` (and gathered over ``fsdp`` before use) and batches over ``devices / tensor`` shards;
memory time is ``bytes / bandwidth``. A program's time is the larger (the bound that wins).
With ``W`` the matmul weights (non-embedding params, a tied head counted) in the compute dtype,
``P`` all params, ``k`` the KV bytes per token (2 · layers · kv_heads · head_dim · itemsize), ``D``
devices and ``T`` tensor:

* decode step of ``s`` slots at context ``c`` (pages of ``page``):
  ``W/T + s · ⌈c/page⌉ · page · k / D`` (each weight once, each slot's pages once);
* prefill of ``n`` prompts of ``p`` tokens in chunks of ``chunk`` tokens per shard:
  ``chunks · W/T + 2 · n · p · k / D`` (weights once per chunk; the KV written, then read once);
* log-prob pass over ``t`` tokens in ``m`` micro-batches: ``m · W/T + A(t)/D``;
  (here and in the update, a quantized base's block kernels count at their stored width, `QUANTIZED_BYTES`)
* update over ``t`` tokens, ``M`` mini-batches of ``m`` micro-batches, ``P'`` the trained params
  (`tooln1.models.flops.trained_params`: all of them, or the adapters with LoRA):
  ``M·m · (W_params·2·itemsize + 8·P')/T + M · 28 · P'/(fsdp·T) + passes · A(t)/D`` (weights read in the
  forward and the backward (the backward less the frozen blocks), fp32 gradients accumulated (read +
  written) per micro-batch; per optimizer step fp32 params and two Adam moments read + written and the
  gradients read: 4 · 7 bytes);

where ``A(t) = 2 · t · (layers · (4·d + 2·kv_heads·head_dim + 3·intermediate) · itemsize + 4 · vocab)``
is a first-order activation traffic: each block's input, attention projections and MLP intermediates,
and the fp32 logits, written once and read once.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from tooln1.models.flops import (
    decode_flops,
    forward_flops,
    non_embedding_params,
    prefill_flops,
    projection_dims,
    train_passes,
    trained_params,
)

ADAM_BYTES_PER_PARAM = 28  # fp32 param, m, v read + written, fp32 gradient read
GRAD_ACCUM_BYTES_PER_PARAM = 8  # fp32 gradient accumulator read + written


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a program spreads over a mesh: ``devices`` in all, weights split ``tensor`` ways, the
    optimizer state ``fsdp · tensor`` ways, batches over the ``devices / tensor`` shards."""

    devices: int = 1
    tensor: int = 1
    fsdp: int = 1

    @property
    def shards(self) -> int:
        return max(1, self.devices // self.tensor)


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one program (or all its runs in a step) spends: global FLOPs, HBM bytes per device."""

    flops: float
    bytes: float
    devices: int = 1

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.devices)

    def __mul__(self, times: float) -> Cost:
        return Cost(self.flops * times, self.bytes * times, self.devices)


def bound(cost: Cost, peak_flops: float, bandwidth: float) -> dict[str, Any]:
    """The compute and memory times of ``cost`` on devices of ``peak_flops`` FLOP/s and ``bandwidth``
    bytes/s, which of them wins, and the time it implies."""
    compute = cost.flops / (cost.devices * peak_flops)
    memory = cost.bytes / bandwidth
    return {"flops": cost.flops, "hbm_bytes": cost.bytes, "compute_seconds": compute, "memory_seconds": memory,
            "bound": "compute" if compute >= memory else "memory", "seconds": max(compute, memory)}


def weight_bytes(config: Any, itemsize: int) -> float:
    """The matmul weights one forward reads (the embedding lookup reads a few rows only)."""
    return non_embedding_params(config) * itemsize


# The bytes a quantized base kernel's weight is held in, its scales included (`tooln1.models.quantize`: int8's
# one float32 scale per output channel is negligible; int4 has one per group of 32 inputs)
QUANTIZED_BYTES = {"int8": 1.0, "int4": 0.5 + 4 / 32}


def trained_model_weight_bytes(config: Any, itemsize: int) -> float:
    """The matmul weights a forward or backward of the trained model reads: `weight_bytes`, with a quantized
    base's block kernels at their stored width (QLoRA). The engine decodes a merged copy in the compute dtype."""
    quantized = getattr(config, "base_quantization", "none")
    if quantized == "none":
        return weight_bytes(config, itemsize)
    kernels = config.num_layers * sum(i * o for i, o in projection_dims(config).values())
    return weight_bytes(config, itemsize) + kernels * (QUANTIZED_BYTES[quantized] - itemsize)


def kv_bytes_per_token(config: Any, itemsize: int) -> float:
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize


def activation_bytes(config: Any, tokens: float, itemsize: int) -> float:
    """First-order activation traffic of a forward over ``tokens`` (module docstring's ``A``)."""
    c = config
    per_layer = 4 * c.hidden_size + 2 * c.num_kv_heads * c.head_dim + 3 * c.intermediate_size
    return 2 * tokens * (c.num_layers * per_layer * itemsize + 4 * c.vocab_size)


def decode_step(config: Any, slots: float, context: float, page_size: int, layout: Layout, itemsize: int) -> Cost:
    """One decode step of ``slots`` slots (global), each attending to ``context`` tokens of KV pages."""
    pages = math.ceil(context / page_size) * page_size
    kv = slots * pages * kv_bytes_per_token(config, itemsize) / layout.devices
    return Cost(forward_flops(config, slots, context), weight_bytes(config, itemsize) / layout.tensor + kv,
                layout.devices)


def decode(config: Any, samples: int, prompt: int, response: int, slots: int, page_size: int, layout: Layout,
           itemsize: int) -> tuple[Cost, int]:
    """A rollout's decode: ``samples`` responses of ``response`` tokens on ``slots`` slots (global), in
    waves of at most ``slots``; each step at the mean context. Returns (cost, decode steps)."""
    waves = math.ceil(samples / slots)
    steps = waves * response
    step = decode_step(config, samples / waves, prompt + response / 2, page_size, layout, itemsize)
    return Cost(decode_flops(config, samples, 1, prompt, response), steps * step.bytes, layout.devices), steps


def prefill(config: Any, prompts: int, prompt: int, chunk: int, layout: Layout, itemsize: int) -> Cost:
    """Prefilling ``prompts`` prompts of ``prompt`` tokens, ``chunk`` tokens per shard and chunk."""
    chunks = math.ceil(math.ceil(prompts / layout.shards) * prompt / chunk)
    kv = 2 * prompts * prompt * kv_bytes_per_token(config, itemsize) / layout.devices
    return Cost(prefill_flops(config, prompts, prompt), chunks * weight_bytes(config, itemsize) / layout.tensor + kv,
                layout.devices)


def rollout_work(config: Any, stats: dict[str, Any], layout: Layout, itemsize: int) -> dict[str, Cost]:
    """What a rollout the engine ran did, from its counts (`tooln1.rollout.engine.Engine.stats`): the prefill
    (its chunks each read the weights; each prompt token attends to the keys before it and writes its KV,
    read back once) and the decode (each step reads the weights, each live slot its own context's KV), so a
    measured time can be set against what it must have cost. Contexts are exact token counts, not pages."""
    head = config.hidden_size * config.vocab_size
    tokens, steps = stats["prefill_tokens"], stats["slot_steps"]
    weights = weight_bytes(config, itemsize) / layout.tensor
    kv = kv_bytes_per_token(config, itemsize) / layout.devices
    attention = 4 * config.num_layers * config.num_heads * config.head_dim  # FLOPs per query per key
    prefill_flops = 2 * (non_embedding_params(config) - head) * tokens + attention * stats["prefill_context_tokens"]
    decode_flops = 2 * non_embedding_params(config) * steps + attention * stats["decode_context_tokens"]
    return {"prefill": Cost(prefill_flops, stats["prefill_chunks"] * weights + 2 * tokens * kv, layout.devices),
            "decode": Cost(decode_flops, stats["decode_steps"] * weights + stats["decode_context_tokens"] * kv,
                           layout.devices)}


def logprobs(config: Any, rows: int, seq: int, micro_batches: int, layout: Layout, itemsize: int) -> Cost:
    """One log-prob pass (a forward) over ``rows`` rows of ``seq`` tokens."""
    tokens = rows * seq
    nbytes = (micro_batches * trained_model_weight_bytes(config, itemsize) / layout.tensor
              + activation_bytes(config, tokens, itemsize) / layout.devices)
    return Cost(forward_flops(config, tokens, seq), nbytes, layout.devices)


def update(config: Any, rows: int, seq: int, mini_batches: int, micro_batches: int, layout: Layout,
           itemsize: int) -> Cost:
    """One update: forward + backward over ``rows`` rows of ``seq`` tokens, ``micro_batches`` per
    mini-batch, an AdamW step per mini-batch."""
    tokens = rows * seq
    passes = train_passes(config)
    trained = trained_params(config)
    # the backward reads every weight above the frozen blocks (all of them with adapters)
    backward = 1.0 if getattr(config, "lora_rank", 0) else 1 - getattr(config, "frozen_layers", 0) / config.num_layers
    reads = trained_model_weight_bytes(config, itemsize) * (1 + backward)
    per_micro_batch = reads + trained * GRAD_ACCUM_BYTES_PER_PARAM
    weights = mini_batches * micro_batches * per_micro_batch
    optimizer = mini_batches * ADAM_BYTES_PER_PARAM * trained / (layout.fsdp * layout.tensor)
    nbytes = weights / layout.tensor + optimizer + passes * activation_bytes(config, tokens, itemsize) / layout.devices
    return Cost(passes * forward_flops(config, tokens, seq), nbytes, layout.devices)


def against_measured(measured: dict[str, float], costs: dict[str, Cost], peak_flops: float,
                     bandwidth: float) -> dict[str, dict[str, Any]]:
    """Each measured program's bound (`bound`) with its measured seconds and ``measured ÷ predicted``."""
    out = {}
    for name, seconds in measured.items():
        b = bound(costs[name], peak_flops, bandwidth)
        out[name] = dict(b, measured_seconds=seconds, ratio=seconds / b["seconds"] if b["seconds"] else math.inf)
    return out


def step_seconds(bounds: list[dict[str, Any]]) -> float:
    """A step's predicted time: its programs run one after another, each at its bound."""
    return sum(b["seconds"] for b in bounds)


__all__ = ["Cost", "Layout", "activation_bytes", "against_measured", "bound", "decode", "decode_step",
           "kv_bytes_per_token", "logprobs", "prefill", "rollout_work", "step_seconds",
           "trained_model_weight_bytes", "update", "weight_bytes"]
