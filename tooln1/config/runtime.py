"""The runtime objects a config describes, built in one place: the optimizers, the losses and the
samplers of a run, from its ConfigDict (or its :func:`tooln1.config.schema.typed` view), so that the
training loop and ``tooln1-fit`` build the same ones."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from tooln1.config.schema import OptimizerSection
from tooln1.config.validation import lora_targets
from tooln1.environments import ToolLimits
from tooln1.grpo import GRPOLoss
from tooln1.rollout.engine import EngineConfig
from tooln1.rollout.sampling import DEFAULT_PROMPT_BUCKETS, SamplingConfig
from tooln1.training.sft_loss import SFTLoss
from tooln1.training.updater import OptimizerConfig


def lora_options(model: Any) -> dict[str, Any]:
    """The `ModelConfig` fields of ``cfg.model.lora`` (empty without adapters)."""
    lo = model.lora
    if not lo.rank:
        return {}
    return dict(lora_rank=int(lo.rank), lora_alpha=float(lo.alpha), lora_targets=lora_targets(lo.targets),
                base_quantization=lo.quantize)


def base_dtype(model: Any) -> str:
    """The dtype the base weights are held in: ``model.dtype``, or with adapters the compute dtype (the
    base is frozen, so it needs no float32 master copy)."""
    return model.compute_dtype if model.lora.rank else model.dtype


def trajectory_tokens(grpo: Any) -> int:
    """A multi-turn trajectory's tokens after its prompt at most: ``grpo.max_trajectory_tokens``, else
    room for ``max_turns`` replies and an observation of 256 tokens after each."""
    return grpo.max_trajectory_tokens or grpo.max_turns * (grpo.max_response_tokens + 256)


def tool_limits(grpo: Any) -> ToolLimits:
    return ToolLimits(timeout_s=grpo.tool_timeout_s, max_chars=grpo.observation_chars)


def optimizer_config(section: Any) -> OptimizerConfig:
    """AdamW of ``cfg.sft.optimizer`` or ``cfg.grpo.optimizer``."""
    return OptimizerConfig(**{f.name: getattr(section, f.name) for f in dataclasses.fields(OptimizerSection)})


def grpo_loss(grpo: Any) -> GRPOLoss:
    """The GRPO objective of ``cfg.grpo``: one optimizer step per rollout batch is on-policy (the old
    log-probs are the update's own); ``share_prompt`` packs each group into one row."""
    return GRPOLoss(clip_eps=grpo.clip_eps, kl_coef=grpo.kl_coef, loss_agg=grpo.loss_agg,
                    temperature=grpo.temperature, logprob_chunk_size=grpo.logprob_chunk_size or None,
                    on_policy=grpo.num_mini_batches == 1, rows_per_prompt=grpo.group_size if grpo.share_prompt else 1)


def sft_loss(sft: Any) -> SFTLoss:
    """The SFT objective of ``cfg.sft``."""
    return SFTLoss(loss_agg=sft.loss_agg)


def logprob_micro_batch(grpo: Any) -> int:
    """Rows per old/reference log-prob forward of ``cfg.grpo``: its own size, else the update's
    micro-batch, else the mini-batch."""
    return (grpo.logprob_micro_batch_size or grpo.micro_batch_size
            or grpo.batch_size * grpo.group_size // grpo.num_mini_batches)


def prompt_buckets(cfg: Any) -> tuple[int, ...]:
    """Padded prompt lengths: multiples of ``grpo.prompt_bucket`` up to ``data.max_prompt_tokens``
    (fewer compiled shapes), or the sampler's powers of two when it is 0."""
    b = cfg.grpo.prompt_bucket
    if not b:
        return DEFAULT_PROMPT_BUCKETS
    return tuple(range(b, -(-cfg.data.max_prompt_tokens // b) * b + 1, b))


def rollout_sampling(cfg: Any, eos_ids: Sequence[int], pad_id: int) -> SamplingConfig:
    """GRPO's rollouts: ``grpo.group_size`` samples per prompt on ``grpo.rollout_slots`` decode slots."""
    g = cfg.grpo
    return SamplingConfig(num_samples=g.group_size, max_new_tokens=g.max_response_tokens, temperature=g.temperature,
                          top_p=g.top_p, top_k=g.top_k, eos_ids=tuple(eos_ids), pad_id=pad_id,
                          prompt_buckets=prompt_buckets(cfg), engine=EngineConfig(num_slots=g.rollout_slots))


def validation_sampling(cfg: Any, eos_ids: Sequence[int], pad_id: int) -> SamplingConfig:
    """Greedy validation: one response per prompt on ``eval.rollout_slots`` decode slots."""
    return SamplingConfig(num_samples=1, max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0,
                          eos_ids=tuple(eos_ids), pad_id=pad_id, prompt_buckets=prompt_buckets(cfg),
                          engine=EngineConfig(num_slots=cfg.eval.rollout_slots))
