"""The GRPO phase of a run (docs/design.md §8). Each step:

    next batch of prompts (the iterator, this process's share)
    → `RolloutWorker.run`: G responses per prompt, each group decoded and scored as it finishes
    → `compute_advantages` over each group's rewards
    → update: old and reference log-prob passes, then `Updater.step` (``num_mini_batches`` optimizer steps)
    → scalars logged, periodic validation, checkpoint (`tooln1.training.phase.Phase`)
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from tooln1.config.runtime import (
    grpo_loss,
    logprob_micro_batch,
    optimizer_config,
    rollout_sampling,
    tool_limits,
    trajectory_tokens,
)
from tooln1.data import prompt_batch
from tooln1.data.iterator import BatchIterator, global_array
from tooln1.data.tokens import truncated_fraction
from tooln1.grpo import compute_advantages
from tooln1.models.flops import update_flops
from tooln1.models.lora import trainable
from tooln1.rollout.multi_turn import MultiTurnWorker
from tooln1.rollout.scoring import RolloutBatch, RolloutWorker
from tooln1.training.batch import update_batch
from tooln1.training.context import RunContext, say
from tooln1.training.metrics import grpo_scalars, peak_flops
from tooln1.training.phase import Phase, PhaseResult
from tooln1.training.updater import ReferencePolicy, Updater
from tooln1.training.validation import validate


class GRPOPhase:
    """GRPO from ``model`` (the initial or SFT'd policy, which is also the frozen reference)."""

    def __init__(self, ctx: RunContext, model: Any):
        self.ctx = ctx
        cfg = self.cfg = ctx.cfg.grpo
        self.group_size = cfg.group_size
        iterator = BatchIterator(len(ctx.train_records), cfg.batch_size, seed=ctx.cfg.data.seed)
        self.phase = Phase(ctx, "grpo", iterator, cfg.steps or cfg.epochs * iterator.steps_per_epoch, cfg.loss_agg)
        self.loss = grpo_loss(cfg)
        self.updater = Updater(model, self.loss, optimizer_config(cfg.optimizer), num_mini_batches=cfg.num_mini_batches,
                               micro_batch_size=cfg.micro_batch_size or None)
        self.logprob_micro_batch = logprob_micro_batch(cfg)
        # The reference is the frozen policy at the start of GRPO: copy it before the first step. With
        # adapters that is a copy of the adapters alone (B = 0 from the base: the base model itself).
        self.reference = (ReferencePolicy(nnx.state(model, trainable(model)), offload_to_host=cfg.ref_offload,
                                          dtype=ctx.cfg.model.compute_dtype) if cfg.kl_coef > 0 else None)
        self.state, meta = self.phase.resume(self.updater.init(model))
        result = self.phase.result
        if "val_before" in meta:
            self.phase.meta["val_before"] = result.val_before = meta["val_before"]
        elif self.phase.step == 0 and ctx.cfg.eval.at_start:
            self.phase.meta["val_before"] = result.val_before = validate(ctx, model, 0, "before GRPO")
        self.policy = self.updater.model(self.state)

    def run(self) -> tuple[Any, PhaseResult]:
        """The steps left up to ``grpo.steps``; the policy and the phase's result."""
        phase = self.phase
        if phase.running:
            self._start()
        while phase.running:
            t0 = time.perf_counter()
            records = phase.next_records(self.ctx.train_records)
            rollout = self._rollout(records)
            t1 = time.perf_counter()
            self._log_rollouts(records, rollout)
            advantages = np.asarray(compute_advantages(rollout.rewards, self.group_size))
            t2 = time.perf_counter()
            metrics, flops, refresh_s = self._update(rollout, advantages)
            t3 = time.perf_counter()
            seconds = {"sample": t1 - t0, "update": t3 - t2, "step": t3 - t0,
                       # scoring overlaps decoding: score = what was left after the device finished
                       "score": rollout.timings["score_tail"] + t2 - t1, "rollout_device": rollout.timings["device"],
                       "rollout_prefill": rollout.timings["prefill"], "refresh_weights": refresh_s}
            if "tool_wait" in rollout.timings:  # multi-turn: the rollout's time with every slot waiting on a tool
                seconds["tool_wait"] = rollout.timings["tool_wait"]
            self._end_step(rollout, metrics, flops, seconds)
        return self.policy, phase.finish()

    def _start(self) -> None:
        """Say what the phase will do; the rollout worker (its engine takes its own copy of the weights),
        the peak FLOP/s for MFU, the clock."""
        cfg, ctx = self.cfg, self.ctx
        say(f"GRPO: {self.phase.total} steps of {cfg.batch_size} prompts × G={self.group_size} "
            f"(T={cfg.temperature}, {cfg.max_response_tokens} new tokens max), {cfg.num_mini_batches} "
            f"mini-batches, lr {cfg.optimizer.learning_rate}, kl {cfg.kl_coef}, reward {cfg.reward!r}, "
            f"loss aggregation {cfg.loss_agg!r}")
        sampling = rollout_sampling(ctx.cfg, ctx.eos_ids, ctx.pad_id)
        self.peak_flops = peak_flops(ctx.cfg.log.peak_tflops)
        self.phase.start()
        self.rollouts = RolloutWorker(self.policy, ctx.tokenizer, sampling, cfg.reward, cfg.reward_workers)
        self.multi_turn = (MultiTurnWorker(self.rollouts.engine, ctx.tokenizer, sampling, cfg.max_turns,
                                           trajectory_tokens(cfg), {"limits": tool_limits(cfg)})
                           if cfg.max_turns > 1 else None)

    def _rollout(self, records: list[dict]) -> RolloutBatch:
        """G responses per prompt from the current policy, and their rewards."""
        key = jax.random.fold_in(self.ctx.base_key, self.phase.step)
        if self.multi_turn is not None:  # each sample in its record's environment, turn after turn
            rollout = self.multi_turn.run(records, key)
        else:
            ids, mask = prompt_batch(records, self.ctx.tokenizer, self.ctx.pad_id)
            rollout = self.rollouts.run(self.policy, ids, mask, [r["answer"] for r in records], key)
        self.rollouts.release()  # the decoding copy is not needed again until after the update
        return rollout

    def _log_rollouts(self, records: list[dict], rollout: RolloutBatch) -> None:
        """The step's first ``log.rollouts`` samples (the first prompt's group first) to rollouts.jsonl:
        what the policy writes, beside the reward it got."""
        g, n = self.group_size, min(self.ctx.cfg.log.rollouts, len(rollout.responses))
        self.phase.append_log("rollouts.jsonl", [
            {"id": records[i // g]["id"], "sample": i % g, "reward": float(rollout.rewards[i]),
             "response": rollout.responses[i]} for i in range(n)])

    def _update(self, rollout: RolloutBatch, advantages: np.ndarray) -> tuple[dict[str, Any], float, float]:
        """The update over the tokens sampled (trimmed; each group's responses packed back to back):
        old and reference log-probs, ``num_mini_batches`` optimizer steps, then the engine takes the
        new parameters. Returns `Updater.step`'s metrics (fetched), the update's FLOPs and the
        seconds the engine's weight refresh took."""
        cfg = self.cfg
        # untrimmed, the packed length stays the static G·R: one compiled update shape
        packing = self.loss.rows_per_prompt if cfg.trim_responses else 1
        host, packed = update_batch(rollout.out, advantages, packing, trim=cfg.trim_responses)
        # multi-turn trajectories train their sampled tokens alone (`tooln1.grpo.GRPOLoss.loss_mask`)
        loss = dataclasses.replace(self.loss, packed_length=packed, loss_mask="response_loss_mask" in host)
        batch = {k: global_array(v, self.ctx.mesh) for k, v in host.items()}
        micro = self.logprob_micro_batch
        if not loss.on_policy:
            batch["old_logprobs"] = self.updater.compute_logprobs(self.state.params, batch, micro, loss)
        if self.reference is not None:
            batch["ref_logprobs"] = self.updater.compute_logprobs(self.reference.params(), batch, micro, loss)
        self.state, metrics = self.updater.step(self.state, batch, loss)
        metrics = jax.device_get(metrics)
        self.policy = self.updater.model(self.state)
        refresh_s = self.rollouts.refresh(self.policy)
        rows, prompt_len = host["prompt_ids"].shape
        flops = update_flops(self.policy.config, rows * self.phase.iterator.process_count, prompt_len,
                             host["response_ids"].shape[1], old_logprobs=not loss.on_policy,
                             reference=self.reference is not None,
                             rows_per_prompt=loss.rows_per_prompt, packed_length=packed)
        return metrics, flops, refresh_s

    def _end_step(self, rollout: RolloutBatch, metrics: dict[str, Any], flops: float,
                  seconds: dict[str, float]) -> None:
        """A skipped update said, the scalars logged, the checkpoint, and validation every
        ``eval.every`` steps (the last step's is the run's own)."""
        phase, ctx, step = self.phase, self.ctx, self.phase.step + 1
        if metrics["skipped"] > 0:
            say(f"GRPO step {step}: non-finite loss or gradient in {int(metrics['skipped'])} of "
                f"{self.cfg.num_mini_batches} mini-batch(es) (loss={float(metrics['loss'])}); that update was skipped")
        out = rollout.out
        lengths = out.mask.sum(-1)
        real_tokens = float(out.prompt_mask.sum() + lengths.sum()) * phase.iterator.process_count
        scalars = grpo_scalars(rollout, self.group_size, truncated_fraction(out.tokens, out.mask, ctx.eos_ids),
                               metrics, seconds, real_tokens=real_tokens, update_flops=flops,
                               peak_flops=self.peak_flops, epoch=phase.iterator.state.epoch)
        phase.end_step(self.state, scalars, {"reward": float(rollout.rewards.mean()), "kl": float(metrics["kl"]),
                                             "len": float(lengths.mean()), "tok/s": scalars["perf/tokens_per_s"]})
        every = ctx.cfg.eval.every
        if every and step % every == 0 and step < phase.total:
            validate(ctx, self.policy, step, "GRPO")


__all__ = ["GRPOPhase"]
