"""The SFT phase (Table 3 recipes, warm-starts): masked next-token CE on the reply in the paper's format.

The reply is ``<think>…</think><tool_call>[…]</tool_call><|im_end|>`` (``sft.target="reason"``) or
``<tool_call>[…]</tool_call><|im_end|>`` (``"no_reason"``). Each step: next batch of records →
left-padded prompt + reply with a loss mask on the reply → `Updater.step`.
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

import jax
import numpy as np

from tooln1.config import ConfigError
from tooln1.config.runtime import optimizer_config, sft_loss
from tooln1.data import tokenize_prompts
from tooln1.data.iterator import BatchIterator, global_array
from tooln1.data.tokens import left_pad
from tooln1.environments import make_environment
from tooln1.models.flops import sft_flops
from tooln1.rollout.multi_turn import TurnTemplate
from tooln1.training.context import RunContext, say
from tooln1.training.metrics import peak_flops
from tooln1.training.phase import Phase, PhaseResult
from tooln1.training.updater import Updater


def sft_response(record: dict, target: str, think_text: str, eos: str = "<|im_end|>",
                 calls: list[dict] | None = None) -> str:
    """The SFT target reply in the paper's format: the record's answer, or ``calls`` (one reply of a
    multi-turn trajectory, thought about with ``think_text``)."""
    think = record.get("reasoning") if calls is None else None
    calls = record["answer"] if calls is None else calls
    body = f"<tool_call>{json.dumps(calls, ensure_ascii=False)}</tool_call>{eos}"
    if target == "no_reason":
        return body
    if not think:
        think = think_text.format(names=", ".join(c["name"] for c in calls) or "no function")
    return f"<think>{think}</think>{body}"


class SFTExamples:
    """Tokenized SFT examples of a config's ``sft`` section: (prompt, reply) pairs, the ones that fit.

    A multi-turn record (``oracle_calls``: the calls of each reply) is one reply per turn with its
    environment's observations between them, as a multi-turn rollout holds them; only the replies
    are trained."""

    def __init__(self, sft_cfg: Any, tokenizer: Any, pad_id: int, eos_text: str):
        self.cfg, self.tokenizer, self.pad_id, self.eos_text = sft_cfg, tokenizer, pad_id, eos_text
        self.template = TurnTemplate(tokenizer, eos_text)

    def pairs(self, records: Sequence[dict]) -> list[tuple[list[int], list[int]]]:
        """(prompt tokens, reply tokens) of each record."""
        return [(p, t) for p, t, _ in self.examples(records)]

    def examples(self, records: Sequence[dict]) -> list[tuple[list[int], list[int], list[int]]]:
        """(prompt tokens, reply tokens, which reply tokens are trained) of each record."""
        prompts = tokenize_prompts(records, self.tokenizer)
        out = []
        for prompt, record in zip(prompts, records):
            if "oracle_calls" in record:
                out.append((prompt, *self._trajectory(record)))
            else:
                reply = self.tokenizer.encode(sft_response(record, self.cfg.target, self.cfg.think_text,
                                                           self.eos_text), add_special_tokens=False)
                out.append((prompt, reply, [1] * len(reply)))
        return out

    def _trajectory(self, record: dict) -> tuple[list[int], list[int]]:
        """The replies of ``record``'s oracle calls played in its environment, with the observations."""
        env = make_environment(record)
        ids: list[int] = []
        trained: list[int] = []
        for calls in record["oracle_calls"]:
            reply = sft_response(record, self.cfg.target, self.cfg.think_text, self.eos_text, calls)
            reply_ids = self.tokenizer.encode(reply, add_special_tokens=False)
            ids += reply_ids
            trained += [1] * len(reply_ids)
            step = env.step(reply.removesuffix(self.eos_text))
            if step.done:
                break
            observation = self.template.ids(step.observation)
            ids += observation
            trained += [0] * len(observation)
        return ids, trained

    def fitting(self, records: Sequence[dict]) -> np.ndarray:
        """Indices of the records whose prompt + reply fit ``sft.max_seq_len``. The others are dropped,
        not truncated: cutting from the left would lose the system prompt and tools."""
        limit = self.cfg.max_seq_len
        fits = np.asarray([len(p) + len(t) <= limit for p, t in self.pairs(records)], bool)
        if dropped := int((~fits).sum()):
            say(f"SFT: dropped {dropped} of {len(records)} examples longer than config.sft.max_seq_len={limit}")
        if fits.sum() < self.cfg.batch_size:
            raise ConfigError(f"config.sft.max_seq_len={limit}: only {int(fits.sum())} of {len(records)} examples fit, "
                              f"fewer than one batch of config.sft.batch_size={self.cfg.batch_size}")
        return np.flatnonzero(fits)

    def arrays(self, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask, loss_mask)`` left-padded to ``sft.max_seq_len``; the loss mask
        marks the reply tokens."""
        length = self.cfg.max_seq_len
        examples = self.examples(records)
        ids, attn = left_pad([p + t for p, t, _ in examples], length, self.pad_id)
        loss_mask, _ = left_pad([[0] * len(p) + trained for p, _, trained in examples], length, 0)
        return ids, attn, loss_mask


def sft_updater(model: Any, cfg: Any, donate: bool = True) -> Updater:
    return Updater(model, sft_loss(cfg.sft), optimizer_config(cfg.sft.optimizer), num_mini_batches=1,
                   micro_batch_size=cfg.sft.micro_batch_size or None, donate=donate)


def run_sft(ctx: RunContext, model: Any) -> tuple[Any, PhaseResult]:
    """SFT from ``model`` for the steps left; the trained model and the phase's result."""
    cfg = ctx.cfg.sft
    examples = SFTExamples(cfg, ctx.tokenizer, ctx.pad_id, ctx.eos_text)
    usable = examples.fitting(ctx.train_records)
    records = [ctx.train_records[i] for i in usable]
    iterator = BatchIterator(len(records), cfg.batch_size, seed=ctx.cfg.data.seed + 1)
    phase = Phase(ctx, "sft", iterator, cfg.steps or cfg.epochs * iterator.steps_per_epoch, cfg.loss_agg)
    phase.result.data["sft_too_long"] = len(ctx.train_records) - len(records)
    updater = sft_updater(model, ctx.cfg)
    state, _ = phase.resume(updater.init(model))
    if phase.step >= phase.total:  # resumed from its last checkpoint: nothing left to do
        return updater.model(state), phase.finish()
    say(f"SFT: {phase.total} steps of {cfg.batch_size} examples ({cfg.target} target), "
        f"lr {cfg.optimizer.learning_rate}, loss aggregation {cfg.loss_agg}")
    peak = peak_flops(ctx.cfg.log.peak_tflops)
    phase.start()
    while phase.running:
        t0 = time.perf_counter()
        ids, attn, loss_mask = examples.arrays(phase.next_records(records))
        batch = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}
        state, metrics = updater.step(state, {k: global_array(v, ctx.mesh) for k, v in batch.items()})
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - t0
        if metrics["skipped"] > 0:
            say(f"SFT step {phase.step + 1}: non-finite loss or gradient (loss={float(metrics['loss'])}); "
                "update skipped")
        rows = ids.shape[0] * iterator.process_count
        scalars = {"sft/loss": metrics["loss"], "sft/nll": metrics["nll"], "sft/grad_norm": metrics["grad_norm"],
                   "sft/learning_rate": metrics.get("learning_rate", np.nan), "sft/skipped": metrics["skipped"],
                   "sft/tokens_per_s": float(attn.sum()) * iterator.process_count / seconds,
                   "sft/step_seconds": seconds, "sft/mfu": sft_flops(model.config, rows, ids.shape[1]) / seconds / peak}
        phase.end_step(state, scalars, {"loss": float(metrics["loss"]), "tok/s": scalars["sft/tokens_per_s"]})
    return updater.model(state), phase.finish()


def finished_sft_model(ctx: RunContext, model: Any) -> Any | None:
    """The model of a finished SFT phase's checkpoint (the GRPO reference after a resume), else None."""
    checkpoints = ctx.checkpointer("sft")
    try:
        meta = checkpoints.restore_meta()
        if meta is None or not meta.get("done"):
            return None
        updater = sft_updater(model, ctx.cfg, donate=False)
        state, _ = checkpoints.restore_latest(updater.init(model), say)
        return updater.model(state)
    finally:
        checkpoints.close()


__all__ = ["SFTExamples", "finished_sft_model", "run_sft", "sft_response"]
