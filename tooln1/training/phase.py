"""What every training phase (SFT, GRPO) does around its steps, so that a phase's loop holds only its steps.

A :class:`Phase` owns the phase's checkpoints and its place in the data: it resumes from the newest
readable checkpoint (refusing one written under another ``seed``), hands out each step's records
(their ids go to ``data_ids.jsonl`` with ``log.data_ids``), and after a step logs its scalars every
``log.every`` steps and at the last, moves the progress bar, checkpoints every ``checkpoint.every``
steps and at the end, and stops at ``debug.kill_after_steps`` (counted over all phases of the run).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tooln1.checkpoints.train_state import rng_to_json
from tooln1.config import ConfigError
from tooln1.data.iterator import BatchIterator
from tooln1.training.metrics import Progress

if TYPE_CHECKING:
    from tooln1.training.loop import Trainer


@dataclasses.dataclass
class PhaseResult:
    steps: int = 0  # 0 when the phase had nothing left to do
    seconds: float = 0.0
    val_before: float | None = None  # GRPO: the validation reward before the first step


class Phase:
    """One phase's checkpoints, data position, progress and per-step bookkeeping (module docstring).

    ``meta``: what every checkpoint of the phase records besides the step, data position and seed
    (the loss aggregation; GRPO adds the validation reward before its first step)."""

    def __init__(self, trainer: Trainer, name: str, iterator: BatchIterator, total: int, loss_agg: str):
        self.trainer, self.name, self.iterator, self.total = trainer, name, iterator, total
        self.label = name.upper()
        self.checkpoints = trainer.checkpointer(name)
        self.step = 0  # steps done
        self.meta: dict[str, Any] = {"loss_agg": loss_agg}
        self.result = PhaseResult()
        self.bar: Progress | None = None
        self.t_start = time.perf_counter()

    def resume(self, state: Any) -> tuple[Any, dict[str, Any]]:
        """``state`` and meta of the phase's newest readable checkpoint (an unreadable one is set aside
        with a warning), its step and data position taken up; ``(state, {})`` without one. A
        checkpoint written under another ``seed`` is refused: its samples would silently differ from
        the run being continued."""
        trainer = self.trainer
        if not trainer.cfg.checkpoint.resume:
            return state, {}
        restored = self.checkpoints.restore_latest(state, trainer.say)
        if restored is None:
            return state, {}
        state, meta = restored
        if meta.get("rng", rng_to_json(trainer.base_key)) != rng_to_json(trainer.base_key):
            was = meta.get("seed")
            raise ConfigError(f"config.seed={trainer.cfg.seed}, but the checkpoints in {self.checkpoints.directory} "
                              f"were written with {'seed ' + str(was) if was is not None else 'another seed'}; resume "
                              "with that seed, or use a new workdir or --config.checkpoint.resume=false")
        self.step = int(meta["step"])
        self.iterator.set_state(meta["data"])
        trainer.say(f"{self.label}: resumed from {self.checkpoints.directory} step {self.step}")
        return state, meta

    def start(self) -> None:
        """The progress bar and the phase's clock, once set-up is done."""
        self.bar = Progress(self.total, self.step, self.name, self.trainer.cfg.log.progress)
        self.t_start = time.perf_counter()

    @property
    def running(self) -> bool:
        return self.step < self.total and not self.trainer.killed()

    def next_records(self, records: Sequence[dict]) -> list[dict]:
        """This process's share of the next batch of ``records`` (those the iterator indexes)."""
        batch = [records[i] for i in self.iterator.next()]
        trainer = self.trainer
        if trainer.cfg.log.data_ids and trainer.process_index == 0:
            with open(os.path.join(trainer.workdir, "data_ids.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"phase": self.name, "step": self.step + 1, "ids": [r["id"] for r in batch]}) + "\n")
        return batch

    def advance(self) -> None:
        """Count a finished step (for the phase and for ``debug.kill_after_steps``)."""
        self.step += 1
        self.trainer.loop_steps += 1

    def log(self, scalars: Mapping[str, Any], progress: Mapping[str, Any]) -> None:
        """The step's scalars (every ``log.every`` steps and the last) and the bar's figures."""
        if self.step % self.trainer.cfg.log.every == 0 or self.step == self.total:
            self.trainer.writer.write(self.step, scalars, phase=self.name, loss_agg=self.meta["loss_agg"])
        self.bar.update(progress)

    def checkpoint(self, state: Any) -> None:
        """Save ``state`` every ``checkpoint.every`` steps and at the end of the phase (marked done)."""
        cfg = self.trainer.cfg
        every, done = cfg.checkpoint.every, self.step == self.total
        if done or (every and self.step % every == 0):
            self.checkpoints.save(self.step, state, {
                "phase": self.name, "step": self.step, "data": self.iterator.get_state(),
                "rng": rng_to_json(self.trainer.base_key), "seed": int(cfg.seed), "done": done, **self.meta})

    def finish(self) -> PhaseResult:
        """Close the bar and the checkpointer (waiting for the last save); the steps done in all (those
        of the checkpoint it resumed from included) and the seconds."""
        if self.bar is not None:
            self.bar.close()
        self.checkpoints.close()
        self.result.steps, self.result.seconds = self.step, time.perf_counter() - self.t_start
        return self.result


__all__ = ["Phase", "PhaseResult"]
