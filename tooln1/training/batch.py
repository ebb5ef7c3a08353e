"""From a rollout to the GRPO update's batch (host side): what the update computes over.

The engine returns every response at the length cap, most of it padding when lengths have a long
tail. The update then runs over: the longest response's power-of-two bucket (``trim``), and with
groups packed under their shared prompt (``rows_per_prompt``) each group's responses back to back in the
longest group's bucket (`tooln1.grpo.packed_length`), so a GRPO step costs the tokens it sampled,
not G times the longest. Both lengths are agreed over processes: the global batch has one shape.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tooln1.data.tokens import bucket_length, power_of_two_buckets
from tooln1.grpo import packed_length


def _global_max(*values: int) -> list[int]:
    """Each value's maximum over processes, in one collective."""
    import jax

    if jax.process_count() == 1:
        return list(values)
    from jax.experimental import multihost_utils

    return [int(v) for v in multihost_utils.process_allgather(np.asarray(values, np.int32)).max(0)]


def update_batch(out: Any, advantages: np.ndarray, rows_per_prompt: int = 1, *,
                 trim: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """This process's update arrays (GRPO batch keys less the old and reference log-probs; the sampler's
    log-probs as ``sample_logprobs``) and the packed length (0 = not packed) for
    `tooln1.grpo.GRPOLoss.packed_length`.

    ``out``: the rollout's `tooln1.rollout.sampling.SampleOutput` (numpy); ``rows_per_prompt`` > 1
    packs each group of rows sharing a prompt (``grpo.share_prompt``). When ``out`` has ``sampled``
    (``[B*G, R]``, true on the tokens the policy sampled; multi-turn trajectories) the batch also holds
    ``response_loss_mask``, those of the response tokens (`tooln1.grpo.GRPOLoss.loss_mask`)."""
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    cap = tokens.shape[1]
    pack = rows_per_prompt > 1
    # a group's packed total never needs more than the untrimmed mask: both lengths in one exchange
    longest, packed = _global_max(int(mask.sum(-1).max()), packed_length(mask, rows_per_prompt) if pack else 0)
    r_len = min(bucket_length(longest, power_of_two_buckets(16, cap)), cap) if trim else cap
    host = {"prompt_ids": np.asarray(out.prompt_ids), "prompt_mask": np.asarray(out.prompt_mask),
            "response_ids": tokens[:, :r_len], "response_mask": mask[:, :r_len],
            "advantages": np.asarray(advantages, np.float32),
            "sample_logprobs": np.asarray(out.logprobs, np.float32)[:, :r_len]}
    sampled = getattr(out, "sampled", None)
    if sampled is not None:
        sampled = np.asarray(sampled)
        if sampled.shape != mask.shape:
            raise ValueError(f"update_batch: the rollout's sampled mask has shape {sampled.shape}, expected "
                             f"{mask.shape} like its tokens")
        host["response_loss_mask"] = ((mask > 0) & (sampled > 0)).astype(np.int32)[:, :r_len]
    return host, min(packed, rows_per_prompt * r_len)


__all__ = ["update_batch"]
