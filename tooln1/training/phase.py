"""What every training phase (SFT, GRPO) does around its steps, so that a phase's loop holds only its steps.

A :class:`Phase` owns the phase's checkpoints and its place in the data: it resumes from the newest
readable checkpoint (refusing one written under another ``seed``) and forgets the metrics rows,
data ids and rollout texts of the steps it will redo, hands out each step's records (their ids go to
``data_ids.jsonl`` with ``log.data_ids``; GRPO writes its sampled texts to ``rollouts.jsonl``), and
after a step logs its scalars every ``log.every`` steps and at the last, moves the progress bar, and
checkpoints every ``checkpoint.every`` steps and at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax

from tooln1.checkpoints.train_state import rng_to_json
from tooln1.config import ConfigError
from tooln1.data.iterator import BatchIterator
from tooln1.training.context import RunContext, say
from tooln1.training.metrics import Progress, rewrite_jsonl


@dataclasses.dataclass
class PhaseResult:
    steps: int = 0  # every step done, those of the checkpoint it resumed from included
    seconds: float = 0.0
    val_before: float | None = None  # GRPO: the validation reward before the first step
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # the phase's data counts, for the summary


class Phase:
    """One phase's checkpoints, data position, progress and per-step bookkeeping (module docstring).

    ``meta``: what every checkpoint of the phase records besides the step, data position and seed
    (the loss aggregation; GRPO adds the validation reward before its first step)."""

    def __init__(self, ctx: RunContext, name: str, iterator: BatchIterator, total: int, loss_agg: str):
        self.ctx, self.name, self.iterator, self.total = ctx, name, iterator, total
        self.label = name.upper()
        self.checkpoints = ctx.checkpointer(name)
        self.step = 0  # steps done
        self.meta: dict[str, Any] = {"loss_agg": loss_agg}
        self.result = PhaseResult()
        self.bar: Progress | None = None
        self.t_start = time.perf_counter()

    def resume(self, state: Any) -> tuple[Any, dict[str, Any]]:
        """``state`` and meta of the phase's newest readable checkpoint, its step and data position
        taken up; ``(state, {})`` without one. The rows the phase logged past that step are forgotten
        (it redoes those steps). A checkpoint written under another ``seed`` is refused: its samples
        would silently differ from the run being continued."""
        cfg = self.ctx.cfg
        restored = self.checkpoints.restore_latest(state, say) if cfg.checkpoint.resume else None
        meta: dict[str, Any] = {}
        if restored is not None:
            state, meta = restored
            key = rng_to_json(self.ctx.base_key)
            if meta.get("rng", key) != key:
                was = meta.get("seed")
                raise ConfigError(f"config.seed={cfg.seed}, but the checkpoints in {self.checkpoints.directory} were "
                                  f"written with {'seed ' + str(was) if was is not None else 'another seed'}; resume "
                                  "with that seed, or use a new workdir or --config.checkpoint.resume=false")
            self.step = int(meta["step"])
            self.iterator.set_state(meta["data"])
            say(f"{self.label}: resumed from {self.checkpoints.directory} step {self.step}")
        self._forget_redone_steps()
        return state, meta

    def _forget_redone_steps(self) -> None:
        """Drop this phase's metrics rows and data ids after ``self.step`` (and its closing validation),
        all of them on a fresh start, so that the logs hold each step once."""
        step, name, label = self.step, self.name, self.label

        def redone(row: Mapping[str, Any]) -> bool:
            phase = str(row.get("phase", ""))
            ours = phase == name or label in phase.split()
            return ours and (step == 0 or row.get("step", 0) > step or phase.startswith("after"))

        self.ctx.writer.forget(redone)
        if jax.process_index() == 0:
            for log in ("data_ids.jsonl", "rollouts.jsonl"):
                rewrite_jsonl(os.path.join(self.ctx.workdir, log), redone)

    def start(self) -> None:
        """The progress bar and the phase's clock, once set-up is done."""
        self.bar = Progress(self.total, self.step, self.name, self.ctx.cfg.log.progress)
        self.t_start = time.perf_counter()

    @property
    def running(self) -> bool:
        return self.step < self.total

    def next_records(self, records: Sequence[dict]) -> list[dict]:
        """This process's share of the next batch of ``records`` (those the iterator indexes)."""
        batch = [records[i] for i in self.iterator.next()]
        if self.ctx.cfg.log.data_ids:
            self.append_log("data_ids.jsonl", [{"ids": [r["id"] for r in batch]}])
        return batch

    def append_log(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """``rows`` of the coming step to the workdir's JSON-lines file ``name`` (process 0 only), tagged with
        the phase and step, so that a resumed run forgets them with the steps it redoes."""
        if rows and jax.process_index() == 0:
            with open(os.path.join(self.ctx.workdir, name), "a", encoding="utf-8") as f:
                f.writelines(json.dumps({"phase": self.name, "step": self.step + 1, **row}) + "\n" for row in rows)

    def end_step(self, state: Any, scalars: Mapping[str, Any], progress: Mapping[str, Any]) -> None:
        """Count the step, log its scalars (every ``log.every`` steps and the last), move the bar, and
        save ``state`` every ``checkpoint.every`` steps and at the end of the phase (marked done)."""
        self.step += 1
        cfg, done = self.ctx.cfg, self.step == self.total
        if self.step % cfg.log.every == 0 or done:
            self.ctx.writer.write(self.step, scalars, phase=self.name, loss_agg=self.meta["loss_agg"])
        self.bar.update(progress)
        every = cfg.checkpoint.every
        if done or (every and self.step % every == 0):
            self.checkpoints.save(self.step, state, {
                "phase": self.name, "step": self.step, "data": self.iterator.get_state(),
                "rng": rng_to_json(self.ctx.base_key), "seed": int(cfg.seed), "done": done, **self.meta})

    def finish(self) -> PhaseResult:
        """Close the bar and the checkpointer (waiting for the last save)."""
        if self.bar is not None:
            self.bar.close()
        self.checkpoints.close()
        self.result.steps, self.result.seconds = self.step, time.perf_counter() - self.t_start
        return self.result


__all__ = ["Phase", "PhaseResult"]
