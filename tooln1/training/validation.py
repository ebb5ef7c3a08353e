"""Validation during training: the greedy mean binary reward on the held-out records, logged under val/."""
from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from tooln1.config.runtime import tool_limits, trajectory_tokens, validation_sampling
from tooln1.data import prompt_batch
from tooln1.reward import score_batch
from tooln1.rollout.engine import Engine
from tooln1.rollout.multi_turn import MultiTurnWorker
from tooln1.rollout.sampling import sample
from tooln1.training.context import RunContext, say


def validate(ctx: RunContext, model: Any, step: int, tag: str) -> float:
    """Greedy mean binary reward of ``model`` on ``ctx.val_records``, written under ``tag`` at ``step``.

    Each process samples a contiguous share, padded with copies of the first record so that every
    process makes the same sampler calls; the means are over the real records of all processes."""
    cfg = ctx.cfg
    t0 = time.perf_counter()
    sampling = validation_sampling(cfg, ctx.eos_ids, ctx.pad_id)
    share = -(-len(ctx.val_records) // jax.process_count())
    first = jax.process_index() * share
    records = ctx.val_records[first:first + share]
    real = np.arange(share) < len(records)
    records = records + [ctx.val_records[0]] * (share - len(records))
    if cfg.grpo.max_turns > 1:
        rewards, diag, responses = _multi_turn(ctx, model, records, sampling)
    else:
        responses = []
        for start in range(0, len(records), cfg.eval.batch_size):
            ids, mask = prompt_batch(records[start:start + cfg.eval.batch_size], ctx.tokenizer, ctx.pad_id)
            out = sample(model, ids, mask, sampling, 0).local()  # greedy: the key is never drawn
            responses += ctx.decode(out.tokens, out.mask)
        rewards, diag = score_batch(responses, [r["answer"] for r in records], "binary")
    sums = np.array([real.sum(), rewards[real].sum(), *(v[real].sum() for v in diag.values())], np.float32)
    if jax.process_count() > 1:
        sums = multihost_utils.process_allgather(sums).sum(0)
    accuracy = float(sums[1] / sums[0])
    scalars = {f"val/{k}": float(v / sums[0]) for k, v in zip(diag, sums[2:])}
    scalars["val/accuracy"] = accuracy
    scalars["val/seconds"] = time.perf_counter() - t0
    ctx.writer.write(step, scalars, phase=tag)
    if responses:
        ctx.writer.text("val/example", responses[0], step)
    detail = ", ".join(f"{k.removeprefix('val/').split('_')[0]} {v:.2f}" for k, v in scalars.items()
                       if k not in _NOT_SAID)
    say(f"validation ({tag}, step {step}): greedy mean binary reward {accuracy:.3f} on {len(ctx.val_records)} "
        f"prompts ({detail})")
    return accuracy


_NOT_SAID = ("val/accuracy", "val/seconds", "val/full_match")


def _multi_turn(ctx: RunContext, model: Any, records: list[dict], sampling: Any
                ) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Greedy trajectories of ``records`` in their environments: rewards, per-trajectory turns and cuts,
    and the trajectories' text."""
    cfg = ctx.cfg
    worker = MultiTurnWorker(Engine(model, sampling.engine), ctx.tokenizer, sampling, cfg.grpo.max_turns,
                             trajectory_tokens(cfg.grpo), {"limits": tool_limits(cfg.grpo)})
    rewards, responses, diag = [], [], {}
    for start in range(0, len(records), cfg.eval.batch_size):
        rollout = worker.run(records[start:start + cfg.eval.batch_size], jax.random.key(0))  # greedy: never drawn
        rewards.append(rollout.rewards)
        responses += rollout.responses
        for k, v in rollout.diagnostics.items():
            diag.setdefault(k, []).append(v)
    return np.concatenate(rewards), {k: np.concatenate(v) for k, v in diag.items()}, responses


__all__ = ["validate"]
