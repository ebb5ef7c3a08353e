#!/usr/bin/env python
"""Multi-turn rollout throughput: the engine's continuation against re-prefilling the whole context every turn.

Every trajectory has up to 4 turns: a turn ends at an EOS id, a tool answers (after ``--latencies`` ms)
with 48 token ids, and the policy continues from them; a turn that reaches its cap without an EOS ends
the trajectory. 8 prompts x G 4 of 400-1,199 random tokens (a tool list, as in ``rollout.py``'s ``tool``
workload), turns geometric with mean ~48 tokens (cap 192), the 6-layer 512-wide random Qwen2 of
``rollout.py`` with near-uniform next-token probabilities, temperature 1. Three systems, each in its
own process:

* ``tooln1 continuation``: one ``Engine.generate`` with ``continue_with`` (tools on its thread pool, the
  observation prefilled into the sample's pages after what it holds).
* ``tooln1 re-prefill loop``: ``Engine.generate`` once per turn on every live trajectory's whole context
  (what a plain generate loop does): the first turn samples G per prompt, later turns one per context.
* ``HF generate loop``: transformers ``generate`` once per turn on the left-padded whole contexts.
* ``tooln1 loop without prefix cache`` (not run by default): the re-prefill loop with
  ``prefix_cache=False``, so every context is prefilled whole, as HF's loop does; the re-prefill loop above
  prefills each prompt once a turn for its G contexts.

The loops run a turn's tools concurrently (a thread each), so they wait one latency per turn. Ours runs
once to compile and is timed on another seed; HF gets a short warm-up. tok/s = sampled tokens (to each
turn's EOS) / wall seconds; the systems draw different samples, so the ratio is taken on tok/s.

    nice python tools/bench/multi_turn.py --out docs/benchmarks.md
    nice python tools/bench/multi_turn.py --systems "tooln1 continuation" --latencies 0   # a quick check
    nice python tools/bench/multi_turn.py --prompt-len 3600,8500 --out docs/benchmarks.md  # BFCL-sized prompts
"""
from __future__ import annotations

import argparse
import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import common
import rollout

SYSTEMS = ("tooln1 continuation", "tooln1 re-prefill loop", "HF generate loop")
NO_CACHE_LOOP = "tooln1 loop without prefix cache"
PROMPTS, G, PROMPT_LEN, MEAN, CAP, OBSERVATION, TURNS = 8, 4, (400, 1200), 48, 192, 48, 4
# BFCL v3 multi-turn's prompts (base, miss_func, miss_param, long_context; function docs and first user
# turn through SmolLM2's chat template): 3,611-8,521 tokens, median 6.4k (docs/benchmarks.md)
BFCL_PROMPT_LEN = (3600, 8500)


def max_length(prompt_len: tuple[int, int]) -> int:
    """A trajectory's cap: the longest prompt, every turn at its cap, a tool answer between turns."""
    return prompt_len[1] + TURNS * CAP + (TURNS - 1) * OBSERVATION


def markers(prompt_len: tuple[int, int]) -> tuple[str, str]:
    """The docs section of a prompt-length range (the default's keeps its historical name)."""
    name = "multi-turn" if prompt_len == PROMPT_LEN else f"multi-turn {prompt_len[0]}-{prompt_len[1]}"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _setup(ckpt: str | None, prompt_len: tuple[int, int]) -> tuple[str, list[list[int]], list[int], int]:
    """(checkpoint, prompt token lists, EOS ids, vocabulary size)."""
    import json

    import numpy as np

    ckpt = ckpt or common.checkpoint(mean_response=MEAN, **rollout.SIX_LAYERS)
    with open(os.path.join(ckpt, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    with open(os.path.join(ckpt, "generation_config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, vocab - 10, rng.randint(*prompt_len)).tolist() for _ in range(PROMPTS)]
    return ckpt, prompts, [eos] if isinstance(eos, int) else list(eos), vocab


class Tool:
    """The environment: after ``latency`` seconds, ``OBSERVATION`` random ids that depend on the trajectory
    and its turn only; counts the calls."""

    def __init__(self, latency: float, vocab: int):
        self.latency, self.vocab, self.calls = latency, vocab, 0
        self.lock = threading.Lock()

    def __call__(self, i: int, g: int, turn: int) -> list[int]:
        import numpy as np

        time.sleep(self.latency)
        with self.lock:
            self.calls += 1
        return np.random.RandomState([i, g, turn]).randint(0, self.vocab - 10, OBSERVATION).tolist()


def _ends_turn(tokens, eos: set[int]) -> bool:
    return len(tokens) > 0 and int(tokens[-1]) in eos


def run_continuation(engine, sampling, prompts, eos, tool: Tool, seed: int, length: int) -> tuple[int, dict]:
    import jax

    turn = {}  # a trajectory's tool calls so far; each trajectory calls one at a time

    def continue_with(i, g, turn_tokens):
        turn[i, g] = turn.get((i, g), 0) + 1
        return tool(i, g, turn[i, g])

    results, _ = engine.generate(prompts, sampling, jax.random.key(seed), continue_with=continue_with,
                                 max_turns=TURNS, max_length=length)
    sampled = sum(int(c.sampled.sum()) for group in results for c in group)
    return sampled, dict(engine.stats)


def run_loop(generate, prompts, eos, tool: Tool) -> tuple[int, dict]:
    """The turn loop of a plain generate: ``generate(contexts, g)`` -> a token list per sample, in order."""
    eos = set(eos)
    live = [(i, g, list(p)) for i, p in enumerate(prompts) for g in range(G)]  # (prompt, sample, context)
    sampled, prefilled, t0 = 0, 0, time.perf_counter()
    with ThreadPoolExecutor(len(live)) as pool:
        for turn in range(1, TURNS + 1):
            contexts = [c for _, _, c in live]
            prefilled += sum(map(len, contexts)) // (G if turn == 1 else 1)
            outs = generate(prompts, G) if turn == 1 else generate(contexts, 1)
            if turn == 1:
                first_turn = time.perf_counter() - t0
            outs = [_to_eos(o, eos) for o in outs]
            sampled += sum(map(len, outs))
            ended = [(i, g, c + o) for (i, g, c), o in zip(live, outs) if _ends_turn(o, eos)]
            if turn == TURNS:
                break
            answers = pool.map(tool, [i for i, _, _ in ended], [g for _, g, _ in ended], [turn] * len(ended))
            live = [(i, g, c + a) for (i, g, c), a in zip(ended, answers)]
    return sampled, dict(prefill_tokens=prefilled, first_turn_s=first_turn)


def _to_eos(tokens, eos: set[int]) -> list[int]:
    out = []
    for t in tokens:
        out.append(int(t))
        if int(t) in eos:
            break
    return out


def _runner(system: str, ckpt: str, prompts, eos, engine_flag: str, length: int
            ) -> Callable[[Tool, int], tuple[int, dict]]:
    """``run(tool, seed) -> (sampled tokens, stats)`` of one system, its model loaded."""
    if system == "HF generate loop":
        generate = _hf_generate(ckpt, eos)
        generate(prompts[:1], 1, new=4)  # warm-up
        return lambda tool, seed: run_loop(generate, prompts, eos, tool)
    import jax

    from tooln1.checkpoints.hf_import import load_model
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig

    settings = dict(num_slots=PROMPTS * G, **({"prefix_cache": False} if system == NO_CACHE_LOOP else {}))
    for item in filter(None, engine_flag.split(",")):
        key, _, value = item.partition("=")
        settings[key.strip()] = rollout._literal(value.strip())
    engine = Engine(load_model(ckpt, dtype="float32"), EngineConfig(**settings))
    config = lambda g: SamplingConfig(num_samples=g, max_new_tokens=CAP, temperature=1.0, eos_ids=tuple(eos))  # noqa: E731
    if system == "tooln1 continuation":
        return lambda tool, seed: run_continuation(engine, config(G), prompts, eos, tool, seed, length)

    def run(tool, seed):
        keys = itertools.count(1000 * seed)  # a fresh key per call, as a loop would draw

        def generate(contexts, g):
            results, _ = engine.generate(contexts, config(g), jax.random.key(next(keys)),
                                         max_prompt_len=length - CAP)
            return [c.tokens for group in results for c in group]

        return run_loop(generate, prompts, eos, tool)

    return run


def child(system: str, ckpt: str | None, latencies: list[float], engine_flag: str, result_path: str,
          prompt_len: tuple[int, int]) -> None:
    ckpt, prompts, eos, vocab = _setup(ckpt, prompt_len)
    run = _runner(system, ckpt, prompts, eos, engine_flag, max_length(prompt_len))
    first = {}
    if system != "HF generate loop":
        t0 = time.perf_counter()
        run(Tool(0.0, vocab), 1)  # compiles what the timed runs use
        first = dict(first_run_s=time.perf_counter() - t0)
    rows = []
    for latency in latencies:
        tool = Tool(latency / 1000, vocab)
        t0 = time.perf_counter()
        tokens, stats = run(tool, 0)
        wall = time.perf_counter() - t0
        rows.append(dict(latency_ms=latency, wall_s=wall, tokens=tokens, tok_s=tokens / wall, tool_calls=tool.calls,
                         stats=dict(stats, **first)))
    common.write_result(result_path, dict(system=system, rows=rows))


def _hf_generate(ckpt, eos):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    pad = eos[0]

    def generate(contexts, g, new=CAP):
        width = max(map(len, contexts))
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
        config = transformers.GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos,
                                               pad_token_id=pad, max_new_tokens=new, num_return_sequences=g)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        return out[:, width:].tolist()

    return generate


def run_all(ckpt, systems, latencies, engine_flag: str, prompt_len: tuple[int, int]) -> str:
    ckpt, prompts, _, _ = _setup(ckpt, prompt_len)
    load = os.getloadavg()
    flags = ["--latencies", ",".join(f"{x:g}" for x in latencies), "--engine", engine_flag,
             "--prompt-len", f"{prompt_len[0]},{prompt_len[1]}"]
    results = {s: common.run_child([__file__, "--child", s, "--ckpt", ckpt, *flags]) for s in systems}
    for s, r in results.items():
        print(s, r, flush=True)
    load_after = os.getloadavg()
    lengths = [len(p) for p in prompts]
    flag = "" if tuple(systems) == SYSTEMS else f' --systems "{",".join(systems)}"'
    flag += "" if latencies == [0, 50] else f" --latencies {flags[1]}"
    flag += f" --engine {engine_flag}" if engine_flag else ""
    flag += "" if prompt_len == PROMPT_LEN else f" --prompt-len {prompt_len[0]},{prompt_len[1]}"
    title = "" if prompt_len == PROMPT_LEN else ", BFCL-sized prompts" if prompt_len == BFCL_PROMPT_LEN else ""
    lines = [markers(prompt_len)[0], f"### Multi-turn rollouts{title} (`tools/bench/multi_turn.py`)", "",
             f"`nice python tools/bench/multi_turn.py{flag} --out docs/benchmarks.md` — {PROMPTS} prompts × G {G} "
             f"of {min(lengths)}–{max(lengths)} tokens, up to {TURNS} turns each (geometric, mean ≈ {MEAN}, cap "
             f"{CAP}), a {OBSERVATION}-token tool answer between turns, random 6-layer 512-wide Qwen2 with "
             f"near-uniform next-token probabilities, temperature 1, float32, on {rollout._where([])}; load average "
             f"{load[0]:.1f} before / {load_after[0]:.1f} after.", "",
             "| tool latency | system | sampled tokens | tool calls | wall s | sampled tok/s | ÷ re-prefill loop |"
             " ÷ HF loop |" + (" ÷ loop without prefix cache |" if NO_CACHE_LOOP in systems else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if NO_CACHE_LOOP in systems else "")]
    baselines = ("tooln1 re-prefill loop", "HF generate loop") + ((NO_CACHE_LOOP,) if NO_CACHE_LOOP in systems else ())
    for k, latency in enumerate(latencies):
        rows = {s: r["rows"][k] for s, r in results.items() if "rows" in r}
        base = {s: rows[s]["tok_s"] for s in baselines if s in rows}
        for s in systems:
            if s not in rows:
                lines.append(f"| {latency:g} ms | {s} | failed: {results[s].get('error', '?')} | | | | |"
                             + " |" * len(baselines))
                continue
            r = rows[s]
            ratios = [f"{r['tok_s'] / base[b]:.2f}×" if b in base else "—" for b in baselines]
            lines.append(f"| {latency:g} ms | {s} | {r['tokens']} | {r['tool_calls']} | {r['wall_s']:.1f} | "
                         f"{r['tok_s']:.0f} | " + " | ".join(ratios) + " |")
    ours = results.get("tooln1 continuation", {}).get("rows")
    loop = results.get("tooln1 re-prefill loop", {}).get("rows")
    if ours:
        s = ours[0]["stats"]
        widths = ", ".join(f"{n} × {w} tokens in {seconds:.1f} s" for w, (n, seconds) in
                           sorted(s["chunk_widths"].items(), key=lambda item: int(item[0])))
        lines += ["", f"Continuation at {latencies[0]:g} ms: {s['slots']} slots, {s['rounds']} rounds, "
                      f"{s['prefill_tokens']} tokens prefilled in {s['prefill_chunks']} chunks ({widths}; "
                      f"{s['continuations']} continuations, {s['inserted_tokens']} inserted tokens), "
                      f"{s['decode_steps']} decode steps, "
                      f"{s['prefill_rounds_s']:.1f} of {s['device_s']:.1f} s in rounds that prefill; "
                      f"{ours[-1]['stats']['tool_wait_s']:.2f} s with every slot waiting on a tool at "
                      f"{latencies[-1]:g} ms; first run, compile included: {s['first_run_s']:.1f} s."]
    no_cache = results.get(NO_CACHE_LOOP, {}).get("rows")
    if no_cache:
        lines.append(f"The loop without prefix cache prefilled every later turn's contexts whole; at "
                     f"{latencies[0]:g} ms its first turn took {no_cache[0]['stats']['first_turn_s']:.1f} s.")
    if loop:
        lines.append(f"The re-prefill loop prefilled {loop[0]['stats']['prefill_tokens']} context tokens; at "
                     f"{latencies[0]:g} ms its first turn (the prompts' prefill and first replies, which the "
                     f"continuation does too) took {loop[0]['stats']['first_turn_s']:.1f} s.")
    lines.append(markers(prompt_len)[1])
    return "\n".join(lines)


def main():
    ap = common.parser(__doc__, child=True)
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma-separated subset of: " + ", ".join(SYSTEMS + (NO_CACHE_LOOP,)))
    ap.add_argument("--latencies", default="0,50", help="tool latencies in ms, comma-separated")
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the random 6-layer model, cached)")
    ap.add_argument("--out", default=None, help="markdown file whose multi-turn section the table replaces")
    ap.add_argument("--engine", default="", help="EngineConfig settings of ours, NAME=VALUE,... (prefill_chunk=128)")
    ap.add_argument("--prompt-len", default=f"{PROMPT_LEN[0]},{PROMPT_LEN[1]}",
                    help="prompt lengths LO,HI in tokens (BFCL multi-turn's: {},{})".format(*BFCL_PROMPT_LEN))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # the system a child process runs
    args = ap.parse_args()
    latencies = [float(x) for x in args.latencies.split(",")]
    try:
        lo, hi = (int(x) for x in args.prompt_len.split(","))
    except ValueError:
        ap.error(f"--prompt-len {args.prompt_len!r}: expected LO,HI token counts, e.g. 400,1200")
    if not 1 < lo < hi:
        ap.error(f"--prompt-len {args.prompt_len!r}: expected 1 < LO < HI")
    if args.child:
        return child(args.child, args.ckpt, latencies, args.engine, args.result, (lo, hi))
    text = run_all(args.ckpt, [s.strip() for s in args.systems.split(",")], latencies, args.engine, (lo, hi))
    print(text)
    if args.out:
        rollout._write_section(args.out, text, *markers((lo, hi)))


if __name__ == "__main__":
    main()
