#!/usr/bin/env python
"""The speed figures only a GPU (or TPU) gives, in one run: the engine's decode step against its HBM roofline,
its prefill's MFU on 8,192-token chunks, one GRPO iteration's update MFU, and the allocator's peak memory
against the compiled programs' (what ``tooln1-fit`` reads) for the same engine.

Models are random (``tooln1.models.config.PRESETS`` shapes, bf16 weights and compute), built on the device
without a checkpoint. Per shape, one process (the allocator's peak is per process, so the widest decode runs
first and sets it):

* **decode**: ``--slots`` prompts of ``--prompt-len`` random tokens, ``--new-tokens`` each (EOS ignored), all in
  flight at once; a pure decode step's time (rounds that prefill excluded) against
  `tooln1.preflight.roofline.decode_step` at the mean context: ``roofline ÷ measured`` is the fraction of
  the HBM roofline reached (the issue's target: >= 0.5 at >= 128 slots);
* **prefill**: 8,192-token prompts in 8,192-token chunks; MFU = the prefill's FLOPs
  (`roofline.rollout_work`) ÷ its rounds' seconds ÷ the device's peak (target >= 0.4);
* **memory**: the allocator's peak (``peak_bytes_in_use``) against the largest compiled engine program's
  arguments + outputs - aliases + temporaries, plus the model's arrays the engine does not decode from
  as they are (target: within 10%).

The GRPO iteration is ``tools/bench/grpo.py --side ours`` at the 0.5B shape, bf16 compute: its update's model
FLOPs ÷ seconds ÷ peak (target >= 0.35) and its roofline (`--roofline-target` there).

    python tools/gpu_speed.py --out gpu_speed.json            # on a GPU: every part, at most 9 minutes
    python tools/gpu_speed.py --shapes qwen2.5-0.5b --parts decode,memory
    python tools/gpu_speed.py --cpu                           # the same code at the tiny shape, to try it out

Peaks come from ``tooln1.preflight.targets`` for the device's kind, or from ``--roofline-target NAME``
(``--cpu``: the H100's, so the arithmetic runs; on a CPU the ratios mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("decode", "prefill", "memory", "grpo")
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=16)


def _config(shape: str):
    import dataclasses

    from tooln1.models.config import PRESETS, ModelConfig

    base = ModelConfig(**TINY) if shape == "tiny" else PRESETS[shape]
    return dataclasses.replace(base, param_dtype="bfloat16", dtype="bfloat16")


def _target(name: str | None):
    """``name``'s target, else the one of this process's first device."""
    import jax

    from tooln1.preflight import targets

    target = targets.get_target(name) if name else targets.target_of_devices(jax.devices()[:1])
    if target is None:
        raise SystemExit(f"gpu_speed: no peaks known for {jax.devices()[0].device_kind!r} (tooln1.preflight.targets); "
                         "name some with --roofline-target")
    return target


def _run(engine, prompts, sampling):
    import jax

    engine.generate(prompts, sampling, jax.random.key(1))  # compiles
    t0 = time.perf_counter()
    engine.generate(prompts, sampling, jax.random.key(0))
    return time.perf_counter() - t0, dict(engine.stats)


def _program_bytes(engine, sampling, samples: int, prompt_len: int) -> int:
    """The largest engine program's arguments + outputs - aliases + temporaries, as tooln1-fit reads them."""
    peak = 0
    for program in ("round", "prefill"):
        mem = engine.lower(sampling, samples, prompt_len, program=program).compile().memory_analysis()
        peak = max(peak, int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                             + mem.temp_size_in_bytes))
    return peak


def one_shape(shape: str, parts: list[str], slot_counts: list[int], prompt_len: int, new_tokens: int,
              prefill_prompts: int, chunk: int, target_name: str | None, partial: str) -> dict:
    """Every engine part at one shape, in this process; what is done so far is rewritten to ``partial``
    after each run, so a process killed at its time limit still leaves its figures."""
    import jax
    import numpy as np
    from flax import nnx

    from tooln1.models import CausalLM
    from tooln1.preflight import roofline
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig

    config = _config(shape)
    target = _target(target_name)
    model = CausalLM(config, rngs=nnx.Rngs(0))
    rng = np.random.RandomState(0)
    out: dict = {"shape": shape, "device": jax.devices()[0].device_kind, "target": target.name}
    layout, item = roofline.Layout(), 2
    if "decode" in parts or "memory" in parts:
        out["decode"] = []
        for i, slots in enumerate(sorted(slot_counts, reverse=True)):
            # one decode width (every slot stays live to the end) and long rounds: fewer compiles, fewer host trips
            engine = Engine(model, EngineConfig(num_slots=slots, max_slots=slots, prefill_chunk=chunk, decode_widths=1,
                                                steps_per_round=64))
            sampling = SamplingConfig(num_samples=1, max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True)
            prompts = [rng.randint(10, config.vocab_size - 10, prompt_len).tolist() for _ in range(slots)]
            wall, stats = _run(engine, prompts, sampling)
            steps = stats["decode_steps"] - stats["prefill_chunks"]  # a prefill round decodes one step
            step_s = (stats["device_s"] - stats["prefill_rounds_s"]) / max(steps, 1)
            context = prompt_len + new_tokens / 2
            step = roofline.decode_step(config, slots, context, engine.config.page_size, layout, item)
            bound = roofline.bound(step, target.peak_flops, target.hbm_bandwidth)
            row = dict(slots=slots, wall_s=wall, decode_steps=steps, step_ms=step_s * 1e3,
                       tokens_per_s=slots / step_s, roofline_step_ms=bound["seconds"] * 1e3, bound=bound["bound"],
                       fraction_of_roofline=bound["seconds"] / step_s)
            if i == 0 and "memory" in parts:  # the widest run first: the process's peak is its
                compiled = _program_bytes(engine, sampling, slots, prompt_len)
                # the model's own arrays stay beside the engine's programs unless the engine decodes them as they are
                decoded = {id(x) for x in jax.tree.leaves(engine.weights)}
                resident = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)) if id(x) not in decoded)
                measured = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
                predicted = compiled + resident
                out["memory"] = dict(slots=slots, compiled_peak_bytes=compiled, resident_bytes=resident,
                                     predicted_bytes=predicted, measured_peak_bytes=measured,
                                     measured_over_predicted=measured / predicted if measured else None)
            out["decode"].append(row)
            _save(partial, out)
            del engine
    if "prefill" in parts:
        engine = Engine(model, EngineConfig(num_slots=prefill_prompts, prefill_chunk=chunk))
        sampling = SamplingConfig(num_samples=1, max_new_tokens=1, temperature=1.0, ignore_eos=True)
        prompts = [rng.randint(10, config.vocab_size - 10, chunk + 1).tolist() for _ in range(prefill_prompts)]
        wall, stats = _run(engine, prompts, sampling)
        flops = roofline.rollout_work(config, stats, layout, item)["prefill"].flops
        out["prefill"] = dict(prompts=prefill_prompts, chunk=chunk, chunks=stats["prefill_chunks"],
                              tokens=stats["prefill_tokens"], seconds=stats["prefill_rounds_s"], flops=flops,
                              mfu=flops / stats["prefill_rounds_s"] / target.peak_flops)
        _save(partial, out)
    return out


def _save(path: str, figures: dict) -> None:
    with open(path, "w") as f:
        json.dump(figures, f)


def grpo_iteration(cpu: bool, timeout: int, target_name: str | None) -> dict:
    """tools/bench/grpo.py's side of ours at the 0.5B shape (tiny with ``cpu``), bf16 compute."""
    shape, size = ("tiny", ["--prompts", "2", "--group", "2", "--prompt-len", "16", "--new-tokens", "8"]) if cpu else (
        "qwen2.5-0.5b", ["--prompts", "16", "--group", "5", "--prompt-len", "512", "--new-tokens", "512"])
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, os.path.join(ROOT, "tools", "bench", "grpo.py"), "--side", "ours", "--shape", shape,
               "--dtype", "bfloat16", "--iters", "1", "--threads", "2", "--json", f.name, *size]
        if target_name:
            cmd += ["--roofline-target", target_name]
        subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
        res = json.load(open(f.name))
    run = res["ours_runs"][0]
    peak = _target(target_name).peak_flops
    return dict(shape=shape, step_s=run["split_s"]["step"], s_per_iter=run["s_per_iter"],
                model_flops_step=res["model_flops_step"], mfu=res["model_flops_step"] / run["split_s"]["step"] / peak,
                roofline=run.get("roofline"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-7b")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--slots", default=None, help="decode slot counts, e.g. 512,128 (default: 512,256,128,64 at "
                                                       "0.5B, 512,128 at 7B, whose compiles take longer)")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8192, help="prefill chunk (the prefill part's prompts are this long)")
    ap.add_argument("--prefill-prompts", type=int, default=8)
    ap.add_argument("--cpu", action="store_true", help="the tiny shape at small sizes, on whatever device JAX has")
    ap.add_argument("--roofline-target", default=None,
                    help="a tooln1-fit target whose peaks to measure against (default: the device's; --cpu: "
                         "h100-80gb:1)")
    ap.add_argument("--timeout", type=int, default=180,
                    help="seconds for each shape's process and the GRPO one (by default all three fit in 9 minutes)")
    ap.add_argument("--out", default=None, help="write every figure here as JSON")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a shape's process: its arguments as JSON
    args = ap.parse_args(argv)
    if args.one:
        one_shape(**json.loads(args.one))
        return {}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        ap.error(f"--parts: unknown {unknown}; expected some of {', '.join(PARTS)}")
    shapes = ["tiny"] if args.cpu else [s.strip() for s in args.shapes.split(",") if s.strip()]
    from tooln1.models.config import PRESETS

    if unknown := sorted(set(shapes) - set(PRESETS) - {"tiny"}):
        ap.error(f"--shapes: unknown {unknown}; expected some of {', '.join(PRESETS)}")
    if args.roofline_target:
        from tooln1.preflight.targets import TargetError, get_target

        try:
            get_target(args.roofline_target)
        except TargetError as e:
            ap.error(f"--roofline-target: {e}")
    if args.cpu:
        args.roofline_target = args.roofline_target or "h100-80gb:1"
        args.slots, args.prompt_len, args.new_tokens, args.chunk, args.prefill_prompts = "8,4", 32, 8, 64, 2
    results: dict = {"shapes": [], "argv": sys.argv[1:]}
    engine_parts = [p for p in parts if p != "grpo"]
    for shape in shapes if engine_parts else []:
        with tempfile.NamedTemporaryFile(suffix=".json") as partial:
            slots = args.slots or ("512,128" if shape == "qwen2.5-7b" else "512,256,128,64")
            one = dict(shape=shape, parts=engine_parts, slot_counts=[int(n) for n in slots.split(",")],
                       prompt_len=args.prompt_len, new_tokens=args.new_tokens, prefill_prompts=args.prefill_prompts,
                       chunk=args.chunk, target_name=args.roofline_target, partial=partial.name)
            try:
                run = subprocess.run([sys.executable, __file__, "--one", json.dumps(one)], capture_output=True,
                                     text=True, timeout=args.timeout)
                error = (run.stderr.strip().splitlines() or ["no output"])[-1] if run.returncode else None
            except subprocess.TimeoutExpired:
                error = f"timed out after {args.timeout} s"
            figures = json.loads(open(partial.name).read() or "{}")
        results["shapes"].append(dict(figures, shape=shape, **({"error": error} if error else {})))
        print(json.dumps(results["shapes"][-1]), flush=True)
        _write(args.out, results)
    if "grpo" in parts:
        try:
            results["grpo"] = grpo_iteration(args.cpu, args.timeout, args.roofline_target)
        except (subprocess.SubprocessError, OSError, KeyError) as e:
            results["grpo"] = dict(error=str(e))
        print(json.dumps(results["grpo"]), flush=True)
        _write(args.out, results)
    return results


def _write(path: str | None, results: dict) -> None:
    """Every figure so far (after each part: a run stopped at its limit keeps the parts it finished)."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
