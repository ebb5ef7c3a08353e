"""Multi-turn rollouts: each sample gets its own environment, which executes the calls of every reply,
and the engine continues the same sample from the observation (token in, token out).

The ids a continuation appends are the chat template's user turn around the observation and the next
assistant header (`TurnTemplate`, rendered from the template once): nothing re-templates the
conversation, so the trajectory the update trains on is exactly the tokens the policy saw. A
trajectory's reward is its environment's; a reply the engine ended without asking for a continuation
(the turn cap) is stepped afterwards so the environment still scores it.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from tooln1.data.tokens import left_pad
from tooln1.environments import Environment, make_environment
from tooln1.rollout.engine import Completion, Engine
from tooln1.rollout.sampling import SampleOutput, SamplingConfig, bucket_length
from tooln1.rollout.scoring import RolloutBatch

_SENTINEL = "\x00observation\x00"


class TurnTemplate:
    """Token ids between a reply's EOS and the next reply: the user turn holding an observation."""

    def __init__(self, tokenizer: Any, eos_text: str = "<|im_end|>"):
        convo = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        before = tokenizer.apply_chat_template(convo, tokenize=False)
        after = tokenizer.apply_chat_template(convo + [{"role": "user", "content": _SENTINEL}], tokenize=False,
                                              add_generation_prompt=True)
        end = before.rfind(eos_text)
        if end < 0 or not after.startswith(before):
            raise ValueError(f"chat template: a reply does not end with {eos_text!r}, or a user turn changes the "
                             "text before it; multi-turn continuation needs both")
        # the reply's EOS is sampled; what the template writes after it is appended with the turn
        turn = before[end + len(eos_text):] + after[len(before):]
        head, tail = turn.split(_SENTINEL)
        self.tokenizer = tokenizer
        self.head = tokenizer.encode(head, add_special_tokens=False)
        self.tail = tokenizer.encode(tail, add_special_tokens=False)

    def ids(self, observation: str) -> list[int]:
        return self.head + self.tokenizer.encode(observation, add_special_tokens=False) + self.tail


class MultiTurnWorker:
    """Rolls out G trajectories per record, each with its own environment (`tooln1.environments`).

    ``max_turns`` replies and ``max_tokens`` tokens after the prompt (replies and observations) cap a
    trajectory; ``max_new_tokens`` of ``sampling`` caps each reply. The engine caps prompt and
    trajectory together: from the shortest prompt of a batch, which keeps every trajectory within
    ``max_tokens`` (one array width for the update), or with ``every_prompt_full`` from the longest,
    which gives every trajectory at least ``max_tokens`` (evaluation over prompts of mixed lengths).
    ``env_options`` go to `make_environment` (tool limits)."""

    def __init__(self, engine: Engine, tokenizer: Any, sampling: SamplingConfig, max_turns: int, max_tokens: int,
                 env_options: dict[str, Any] | None = None, every_prompt_full: bool = False):
        self.engine, self.tokenizer, self.sampling = engine, tokenizer, sampling
        self.max_turns, self.max_tokens, self.every_prompt_full = max_turns, max_tokens, every_prompt_full
        self.env_options = env_options or {}
        self.template = TurnTemplate(tokenizer)

    def _text(self, tokens: np.ndarray) -> str:
        """A reply as the environment reads it: special tokens kept, its EOS dropped."""
        tokens = tokens[:-1] if len(tokens) and int(tokens[-1]) in self.sampling.eos_ids else tokens
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def run(self, records: Sequence[dict], key, environments: Sequence[Sequence[Environment]] | None = None
            ) -> RolloutBatch:
        """G trajectories of each record; ``environments[b][g]`` (default: made from the records) are
        the ones they run in, for a caller that reads them afterwards (an evaluation's verdicts)."""
        g, t0 = self.sampling.num_samples, time.perf_counter()
        envs = environments or [[make_environment(r, **self.env_options) for _ in range(g)] for r in records]
        stepped = [[0] * g for _ in records]

        def continue_with(i: int, s: int, turn: np.ndarray) -> list[int] | None:
            step = envs[i][s].step(self._text(turn))
            stepped[i][s] += 1
            return None if step.done else self.template.ids(step.observation)

        def score(i: int, group: list[Completion]) -> list[float]:
            for s, done in enumerate(group):  # a reply the turn cap ended is still the environment's to score
                turns = _turns(done)
                if stepped[i][s] < len(turns) and done.stop != "max_length":
                    envs[i][s].step(self._text(turns[-1]))
            return [float(env.reward()) for env in envs[i]]

        texts = [self.tokenizer.apply_chat_template(group[0].messages(), tokenize=False, add_generation_prompt=True)
                 for group in envs]
        prompts = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        p = bucket_length(max(map(len, prompts)), self.sampling.prompt_buckets)
        shortest = min(map(len, prompts))
        length = (max(map(len, prompts)) if self.every_prompt_full else shortest) + self.max_tokens
        results, rewards = self.engine.generate(prompts, self.sampling, key, max_prompt_len=p, on_group=score,
                                                continue_with=continue_with, max_turns=self.max_turns,
                                                max_length=length)
        out = trajectory_output(prompts, results, p, length - shortest, self.sampling.pad_id)
        texts = [self.tokenizer.decode(c.tokens, skip_special_tokens=False) for group in results for c in group]
        stops = np.asarray([c.stop for group in results for c in group])
        turns = np.asarray([len(_turns(c)) for group in results for c in group], np.float32)
        stats = self.engine.stats
        timings = {"rollout": time.perf_counter() - t0, "device": stats["device_s"],
                   "prefill": stats["prefill_rounds_s"], "score_tail": stats["score_wait_s"],
                   "tool_wait": stats.get("tool_wait_s", 0.0)}
        return RolloutBatch(out, responses=texts, rewards=np.asarray(rewards, np.float32).reshape(-1),
                            diagnostics={"turns": turns, "cut": (stops == "max_length").astype(np.float32)},
                            timings=timings)


def _turns(completion: Completion) -> list[np.ndarray]:
    """The sampled runs of a trajectory, one per reply."""
    sampled = completion.sampled.astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], sampled, [0]])))
    return [completion.tokens[a:b] for a, b in zip(edges[::2], edges[1::2])]


def trajectory_output(prompts: Sequence[Sequence[int]], results: Sequence[Sequence[Completion]], prompt_len: int,
                      width: int, pad_id: int) -> SampleOutput:
    """Trajectories as a rollout's arrays: ``mask`` covers every token after the prompt (context for
    the update), ``sampled`` the tokens the policy sampled (what it trains)."""
    rows = sum(len(group) for group in results)
    tokens = np.full((rows, width), pad_id, np.int32)
    logprobs = np.zeros((rows, width), np.float32)
    mask = np.zeros((rows, width), np.int32)
    sampled = np.zeros((rows, width), np.int32)
    row = 0
    for group in results:
        for done in group:
            n = len(done.tokens)
            tokens[row, :n], logprobs[row, :n], mask[row, :n], sampled[row, :n] = (
                done.tokens, done.logprobs, 1, done.sampled)
            row += 1
    ids, pmask = left_pad([q for q, group in zip(prompts, results) for _ in group], prompt_len, pad_id)
    return SampleOutput(tokens, logprobs, mask, ids, pmask, num_local=rows, sampled=sampled)


__all__ = ["MultiTurnWorker", "TurnTemplate", "trajectory_output"]
