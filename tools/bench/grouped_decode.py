#!/usr/bin/env python
"""Decode steps with and without grouped prefix reads (`EngineConfig.grouped_decode_from`): G samples of a long
prompt decoding together, where the pure-JAX paged attention reads the prompt's pages once a step for the
group or once a sample.

8 prompts x G 4 of ``--prompt-len`` random tokens (default BFCL multi-turn's 3,600-8,500, a tool list's
size), ``--new-tokens`` each (EOS ignored, so every sample decodes to the cap), temperature 1, the
6-layer 512-wide random Qwen2 of ``rollout.py``, float32, 32 slots, one decode width. The two engines run
in one process, in rotation, each compiled by a warm-up; the figure is milliseconds per decode step of
the rounds that only decode (a round that prefills decodes one step beside its chunk), and the
whole rollout's wall seconds. Same seeds on both sides: the sampled tokens agree up to float rounding.

    nice python tools/bench/grouped_decode.py --repeats 3
"""
from __future__ import annotations

import time

import common
import multi_turn
import rollout

PROMPTS, G = 8, 4


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--prompt-len", default="{},{}".format(*multi_turn.BFCL_PROMPT_LEN), help="LO,HI prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lo, hi = (int(x) for x in args.prompt_len.split(","))

    import jax
    import numpy as np

    import tooln1.rollout.engine as engine_module
    from tooln1.checkpoints.hf_import import load_model
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig

    ckpt = common.checkpoint(**rollout.SIX_LAYERS)
    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, 1000, rng.randint(lo, hi)).tolist() for _ in range(PROMPTS)]
    model = load_model(ckpt, dtype="float32")
    sampling = SamplingConfig(num_samples=G, max_new_tokens=args.new_tokens, temperature=1.0, ignore_eos=True)
    rounds = []  # (decode steps, seconds) of every round that only decodes
    run_round = engine_module.run_round

    def timed(**kw):
        t0 = time.perf_counter()
        out = run_round(**kw)
        live = np.asarray(out[4])  # [steps, X, width]: waits for the round
        if int(np.asarray(kw["max_steps"])) > 1:
            rounds.append((int(live.any(axis=(1, 2)).sum()), time.perf_counter() - t0))
        return out

    engine_module.run_round = timed
    engines = {grouped: Engine(model, EngineConfig(num_slots=PROMPTS * G, decode_widths=1,
                                                         grouped_decode_from=1 if grouped else 0))
               for grouped in (False, True)}
    for engine in engines.values():
        engine.generate(prompts, sampling, jax.random.key(1))
    results = {grouped: [] for grouped in engines}
    for _ in range(args.repeats):
        for grouped, engine in engines.items():
            rounds.clear()
            t0 = time.perf_counter()
            engine.generate(prompts, sampling, jax.random.key(0))
            wall = time.perf_counter() - t0
            steps, seconds = (sum(x) for x in zip(*rounds))
            results[grouped].append((1000 * seconds / steps, wall))
    print(f"`nice python tools/bench/grouped_decode.py --prompt-len {lo},{hi} --new-tokens {args.new_tokens} "
          f"--repeats {args.repeats}` — {PROMPTS} prompts x G {G} of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, {args.new_tokens} tokens each, on {rollout._where([])}\n")
    print("| decode attention | ms per decode step (each rotation) | rollout wall s (each rotation) |")
    print("|---|---|---|")
    for grouped, runs in results.items():
        name = "prompt pages read once a group" if grouped else "each sample reads its own pages"
        print(f"| {name} | {', '.join(f'{ms:.1f}' for ms, _ in runs)} | {', '.join(f'{w:.1f}' for _, w in runs)} |")
    ratios = [a[0] / b[0] for a, b in zip(results[False], results[True])]
    print(f"\nper-sample ÷ grouped, ms per step: {', '.join(f'{r:.2f}×' for r in ratios)}")


if __name__ == "__main__":
    main()
