"""Supervised fine-tuning loss: masked next-token cross-entropy on assistant tokens only.

Used for the paper's No-Reason SFT / Reason-SFT / SFT→RL recipes (Table 3) and for warm-starts.
The caller builds ``loss_mask`` from the chat template (1 on the assistant tokens to learn, 0 on
system/user/tool tokens and padding); :class:`SFTLoss` plugs into :class:`tooln1.training.updater.Updater`
exactly like :class:`tooln1.grpo.GRPOLoss`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from tooln1.grpo import LOGPROB_CHUNK_SIZE, _check_agg, agg_totals, aggregate_loss, hidden_logprobs, masked_mean

Array = jax.Array

SFT_BATCH_KEYS = (
    "input_ids",  # [N, T] int, left- or right-padded
    "attention_mask",  # [N, T]
    "loss_mask",  # [N, T], 1 on the tokens to predict (assistant turns), aligned with input_ids
)


def target_mask(attention_mask: Array, loss_mask: Array) -> Array:
    """Mask of the ``T − 1`` next-token targets: token ``t+1`` counts if it is real and in the loss mask."""
    return ((jnp.asarray(loss_mask)[:, 1:] > 0) & (jnp.asarray(attention_mask)[:, 1:] > 0)).astype(jnp.float32)


def sft_loss(
    model: Any,
    input_ids: Array,
    attention_mask: Array,
    loss_mask: Array,
    *,
    loss_agg: str = "token-mean",
    totals: Mapping[str, Array] | None = None,
    chunk_size: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Mean negative log-likelihood of the masked tokens given their prefix.

    Position ``t`` of the logits scores token ``t+1``; ``loss_mask[:, 0]`` can never count (no
    prefix). ``loss_agg``/``totals`` follow :func:`tooln1.grpo.aggregate_loss` (the totals are those
    of :func:`target_mask`). Metrics: ``nll`` (token mean), ``num_tokens``.
    """
    _check_agg(loss_agg)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2 or jnp.shape(attention_mask) != input_ids.shape or jnp.shape(loss_mask) != input_ids.shape:
        raise ValueError(
            f"sft_loss: input_ids, attention_mask and loss_mask must all be [N, T]; got {input_ids.shape}, "
            f"{jnp.shape(attention_mask)}, {jnp.shape(loss_mask)}"
        )
    mask = target_mask(attention_mask, loss_mask)
    hidden = model.hidden_states(input_ids, attention_mask)[:, :-1]
    lp = hidden_logprobs(model, hidden, input_ids[:, 1:], 1.0, chunk_size=chunk_size)
    loss = aggregate_loss(-lp, mask, loss_agg, totals)
    metrics = {"nll": masked_mean(jax.lax.stop_gradient(-lp), mask), "num_tokens": mask.sum()}
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class SFTLoss:
    """SFT objective over a batch dict with :data:`SFT_BATCH_KEYS`, for :class:`tooln1.training.updater.Updater`."""

    loss_agg: str = "token-mean"
    logprob_chunk_size: int | None = LOGPROB_CHUNK_SIZE

    def __post_init__(self):
        _check_agg(self.loss_agg)

    required_keys = SFT_BATCH_KEYS

    def totals(self, batch: Mapping[str, Array]) -> dict[str, Array]:
        return agg_totals(target_mask(batch["attention_mask"], batch["loss_mask"]))

    def __call__(
        self, model: Any, batch: Mapping[str, Array], totals: Mapping[str, Array] | None = None
    ) -> tuple[Array, dict[str, Array]]:
        return sft_loss(
            model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
            loss_agg=self.loss_agg, totals=totals, chunk_size=self.logprob_chunk_size,
        )
