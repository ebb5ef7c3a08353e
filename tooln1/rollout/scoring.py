"""One GRPO rollout step: prompts -> engine (G samples each) -> responses as text -> rewards.

The GRPO loop (`tooln1.training.grpo_loop`) reads as its steps: iterator -> `Rollouts.run` -> advantages ->
update. Each prompt's G responses are decoded and scored on the engine's worker thread as soon as that group
finishes, while the device keeps decoding the others (`tooln1.rollout.engine`), so reward time mostly
leaves the critical path; ``timings`` shows the split. `Rollouts.refresh` takes the policy's new
parameters into the engine's decoding copy after each update.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from tooln1.rollout.engine import Completion, Engine
from tooln1.reward import score_batch
from tooln1.rollout.sampling import SampleOutput, SamplingConfig, sample_groups


@dataclasses.dataclass
class Rollout:
    out: SampleOutput  # this process's rows, numpy
    responses: list[str]  # [B*G] text, special tokens kept, trailing EOS dropped
    rewards: np.ndarray  # [B*G] float32
    diagnostics: dict[str, np.ndarray]  # score_batch's per-response flags
    timings: dict[str, float]  # seconds: rollout (engine, scoring overlapped), device, prefill, score_tail


def response_text(tokenizer: Any, eos_ids: Sequence[int], rows: Sequence[np.ndarray]) -> list[str]:
    """Responses as text with special tokens kept and the trailing EOS dropped (what the reward expects)."""
    eos = set(int(e) for e in eos_ids)
    cut = [r[:-1] if len(r) and int(r[-1]) in eos else r for r in (np.asarray(r).tolist() for r in rows)]
    return tokenizer.batch_decode(cut, skip_special_tokens=False)


class Rollouts:
    """Samples and scores rollout batches for one policy (see the module docstring)."""

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
            key) -> Rollout:
        """``answers[b]`` is prompt b's reference; every process passes its own prompts (`tooln1.rollout.sampling.sample`)."""
        g = self.sampling.num_samples

        def score(b: int, group: list[Completion]):
            texts = response_text(self.tokenizer, self.sampling.eos_ids, [c.tokens for c in group])
            rewards, diagnostics = score_batch(texts, [answers[b]] * g, self.reward, num_workers=self.reward_workers)
            return texts, rewards, diagnostics

        t0 = time.perf_counter()
        out, groups = sample_groups(model, prompt_ids, prompt_mask, self.sampling, key, engine=self.engine, on_group=score)
        out = out.local()
        responses = [t for texts, _, _ in groups for t in texts]
        rewards = np.concatenate([r for _, r, _ in groups])
        diagnostics = {k: np.concatenate([d[k] for _, _, d in groups]) for k in groups[0][2]}
        stats = self.engine.stats
        timings = {"rollout": time.perf_counter() - t0, "device": stats["device_s"],
                   "prefill": stats["prefill_rounds_s"], "score_tail": stats["score_wait_s"]}
        return Rollout(out, responses, rewards, diagnostics, timings)


__all__ = ["Rollout", "Rollouts", "response_text"]
