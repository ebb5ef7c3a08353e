"""One GRPO rollout: prompts -> engine (G samples each) -> responses as text -> rewards.

Each prompt's G responses are decoded and scored on the engine's worker thread as soon as that
group finishes, while the device keeps decoding the others (`tooln1.rollout.engine`), so reward
time mostly leaves the critical path; ``timings`` shows the split. `RolloutWorker.refresh` takes
the policy's new parameters into the engine's decoding copy after each update.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from tooln1.data.tokens import decode_rows
from tooln1.reward import score_batch
from tooln1.rollout.engine import Completion, Engine
from tooln1.rollout.sampling import SampleOutput, SamplingConfig, sample_groups


@dataclasses.dataclass
class RolloutBatch:
    out: SampleOutput  # this process's rows, numpy
    responses: list[str]  # [B*G] text, special tokens kept, trailing EOS dropped
    rewards: np.ndarray  # [B*G] float32
    diagnostics: dict[str, np.ndarray]  # score_batch's per-response flags
    timings: dict[str, float]  # seconds: rollout (engine, scoring overlapped), device, prefill, score_tail


class RolloutWorker:
    """Samples and scores rollout batches of one policy on one engine (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingConfig, reward: str, reward_workers: int = 0):
        self.tokenizer, self.sampling, self.reward, self.reward_workers = tokenizer, sampling, reward, reward_workers
        self.engine = Engine(model, sampling.engine)

    def refresh(self, model: Any) -> float:
        """Decode from ``model``'s current parameters from now on; returns the seconds it took."""
        return self.engine.refresh(model)

    def release(self) -> None:
        """Free the decoding copy until `refresh` (between a rollout and the update)."""
        self.engine.release()

    def run(self, model: Any, prompt_ids: np.ndarray, prompt_mask: np.ndarray, answers: Sequence[Any],
            key) -> RolloutBatch:
        """``answers[b]`` is prompt b's reference; every process passes its own prompts
        (`tooln1.rollout.sampling.sample`)."""
        g = self.sampling.num_samples

        def score(b: int, group: list[Completion]):
            texts = decode_rows(self.tokenizer, [c.tokens for c in group], self.sampling.eos_ids)
            rewards, diagnostics = score_batch(texts, [answers[b]] * g, self.reward, num_workers=self.reward_workers)
            return texts, rewards, diagnostics

        t0 = time.perf_counter()
        out, groups = sample_groups(model, prompt_ids, prompt_mask, self.sampling, key, engine=self.engine,
                                    on_group=score)
        stats = self.engine.stats
        timings = {"rollout": time.perf_counter() - t0, "device": stats["device_s"],
                   "prefill": stats["prefill_rounds_s"], "score_tail": stats["score_wait_s"]}
        return RolloutBatch(out.local(), responses=[t for texts, _, _ in groups for t in texts],
                            rewards=np.concatenate([r for _, r, _ in groups]),
                            diagnostics={k: np.concatenate([d[k] for _, _, d in groups]) for k in groups[0][2]},
                            timings=timings)


__all__ = ["RolloutBatch", "RolloutWorker"]
