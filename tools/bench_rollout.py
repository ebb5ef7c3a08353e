#!/usr/bin/env python
"""Rollout throughput: the tooln1 engine vs transformers' ``generate`` and ``generate_batch``, one run.

Long-tail workload: 8 prompts x G 4, a 6-layer 512-wide random Qwen2 whose next-token
distribution is near uniform (init_std 0.002), temperature 1, and ``vocab/270`` EOS ids, so response
lengths are geometric with mean ~270, capped at 768. Each system runs in its own subprocess (its
peak RSS is its peak memory) after a short warm-up at the same shapes (compilation excluded);
response tokens/s = response tokens (to the first EOS) / wall time.

    nice python tools/bench_rollout.py --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BEGIN, END = "<!-- rollout:begin -->", "<!-- rollout:end -->"
WORKLOAD = dict(prompts=8, group=4, prompt_len=(64, 192), mean_response=270, cap=768)


def _setup(ckpt):
    import numpy as np

    from tooln1.tiny_checkpoint import make_tiny_checkpoint

    if not os.path.exists(os.path.join(ckpt, "config.json")):
        make_tiny_checkpoint(ckpt, layers=6, hidden=512, heads=8, kv_heads=2, intermediate=1536, init_std=0.002, seed=0)
    with open(os.path.join(ckpt, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    rng = np.random.RandomState(0)
    lo, hi = WORKLOAD["prompt_len"]
    prompts = [rng.randint(0, vocab - 10, rng.randint(lo, hi)).tolist() for _ in range(WORKLOAD["prompts"])]
    eos = list(range(0, vocab - 10, round((vocab - 10) / (vocab / WORKLOAD["mean_response"]))))
    return prompts, eos


def _count(rows, eos) -> int:
    eos, n = set(eos), 0
    for row in rows:
        for t in row:
            n += 1
            if t in eos:
                break
    return n


def run_ours(ckpt, prompts, eos):
    import jax

    from tooln1.engine import Engine, EngineConfig
    from tooln1.hf_io import load_model
    from tooln1.sampling import SamplingConfig

    model = load_model(ckpt, dtype="float32")
    engine = Engine(model, EngineConfig(num_slots=32, page_size=16, prefill_chunk=256, steps_per_round=16))
    cfg = SamplingConfig(num_samples=WORKLOAD["group"], max_new_tokens=WORKLOAD["cap"], temperature=1.0,
                         eos_ids=tuple(eos))
    width = max(map(len, prompts))
    engine.generate(prompts[:1], cfg, jax.random.key(1), max_prompt_len=width)  # compile + warm-up
    t0 = time.perf_counter()
    results, _ = engine.generate(prompts, cfg, jax.random.key(0), max_prompt_len=width)
    wall = time.perf_counter() - t0
    return wall, sum(len(c.tokens) for group in results for c in group), engine.stats


def run_hf(ckpt, prompts, eos, batch: bool):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    g, cap = WORKLOAD["group"], WORKLOAD["cap"]
    gen = transformers.GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos,
                                        pad_token_id=eos[0], max_new_tokens=cap)
    if batch:
        gen.num_return_sequences = g

        def go(ps, new):
            out = model.generate_batch(inputs=ps, generation_config=gen, max_new_tokens=new)
            return [o.generated_tokens for o in out.values()]
    else:
        def go(ps, new):
            width = max(map(len, ps))
            ids = torch.tensor([[eos[0]] * (width - len(p)) + p for p in ps])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                     num_return_sequences=g, max_new_tokens=new)
            return out[:, width:].tolist()
    go(prompts[:1], 4)  # warm-up
    t0 = time.perf_counter()
    rows = go(prompts, cap)
    return time.perf_counter() - t0, _count(rows, eos), {}


def child(system, ckpt):
    prompts, eos = _setup(ckpt)
    fn = {"tooln1 engine": lambda: run_ours(ckpt, prompts, eos),
          "HF generate": lambda: run_hf(ckpt, prompts, eos, False),
          "HF generate_batch": lambda: run_hf(ckpt, prompts, eos, True)}[system]
    wall, tokens, stats = fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT" + json.dumps(dict(system=system, wall_s=wall, tokens=tokens, tok_s=tokens / wall,
                                     peak_rss_mb=peak, stats=stats)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="/tmp/tooln1_bench_rollout_ckpt")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.ckpt)
    _setup(args.ckpt)
    load = os.getloadavg()
    rows = []
    for system in ("tooln1 engine", "HF generate", "HF generate_batch"):
        res = subprocess.run([sys.executable, __file__, "--child", system, "--ckpt", args.ckpt], capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=ROOT))
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
        if not line:
            print(res.stderr[-3000:])
            rows.append(dict(system=system, error=res.stderr.strip().splitlines()[-1][:200]))
            continue
        rows.append(json.loads(line[0][6:]))
        print(rows[-1], flush=True)
    load_after = os.getloadavg()
    best_hf = max((r["tok_s"] for r in rows if "tok_s" in r and r["system"] != "tooln1 engine"), default=None)
    lines = [BEGIN, "## Rollouts: continuous batching (long-tail workload)", "",
             f"`nice python tools/bench_rollout.py --out docs/benchmarks.md` — {WORKLOAD['prompts']} prompts × G "
             f"{WORKLOAD['group']}, prompts {WORKLOAD['prompt_len'][0]}–{WORKLOAD['prompt_len'][1]} tokens, responses "
             f"geometric (mean ≈ {WORKLOAD['mean_response']}, cap {WORKLOAD['cap']}), 6-layer 512-wide random Qwen2, "
             f"near-uniform next-token probabilities, temperature 1, float32, CPU, one run; load average "
             f"{load[0]:.1f} before / {load_after[0]:.1f} after (the 2-core machine is shared).", "",
             "| system | response tokens | wall s | response tok/s | ÷ best HF | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['tok_s'] / best_hf:.2f}×" if best_hf else "—"
        lines.append(f"| {r['system']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tok_s']:.0f} | {ratio} | "
                     f"{r['peak_rss_mb']:.0f} |")
    ours = next((r for r in rows if r["system"] == "tooln1 engine" and "stats" in r), None)
    if ours:
        s = ours["stats"]
        lines += ["", f"Engine: {s['slots']} slots, {s['rounds']} rounds, {s['decode_steps']} decode steps for "
                      f"{s['slot_steps']} slot-steps ({s['slot_steps'] / max(1, s['decode_steps'] * s['slots']):.0%} "
                      f"slot occupancy), device {s['device_s']:.1f} s of {s['wall_s']:.1f} s."]
    lines.append(END)
    text = "\n".join(lines)
    print(text)
    if args.out:
        old = open(args.out).read() if os.path.exists(args.out) else ""
        if BEGIN in old:
            new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            new = old.rstrip() + "\n\n" + text + "\n"
        with open(args.out, "w") as f:
            f.write(new)


if __name__ == "__main__":
    main()
