#!/usr/bin/env python
"""Benchmark the jitted group sampler against transformers' ``generate`` (PyTorch CPU), same run.

For each model shape: B prompts x G samples, prompt length P, R new tokens with EOS ignored, random
weights (``tooln1.checkpoints.tiny.make_tiny_checkpoint``), float32 everywhere, temperature 0.7, top-p 1,
top-k off (the paper's rollout settings). Reports tokens/s of both (B*G*R / wall time, compile and
warm-up excluded), the ratio, our compile time, and our decode time per token at R and at a longer
R (``(t(R) - t(R=1)) / (R - 1)``, i.e. prefill excluded), to show the per-token cost does not grow.

    python tools/bench_sampling.py --shapes tiny,qwen2.5-0.5b --out docs/benchmarks.md

Writes a "Sampling" section into ``--out`` (between markers, other sections untouched) and the raw
numbers to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BEGIN, END = "<!-- sampling:begin -->", "<!-- sampling:end -->"


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_ours(path, prompts, g, r, r_long, repeats):
    import jax
    import numpy as np

    from tooln1.checkpoints.hf_import import load_model
    from tooln1.rollout.sampling import SamplingConfig, precompile, sample

    # Compile ahead of time (timed on its own) into a persistent cache that the timed call then
    # loads, so no timed call includes compilation and no generation is run just to warm up.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="tooln1_bench_jaxcache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    model = load_model(path, dtype="float32")
    mask = np.ones_like(prompts)

    def config(new_tokens):
        return SamplingConfig(num_samples=g, max_new_tokens=new_tokens, temperature=0.7, top_p=1.0, top_k=0,
                              ignore_eos=True, eos_ids=(), pad_id=0)

    def run(new_tokens, seed):
        cfg = config(new_tokens)
        t0 = time.perf_counter()
        out = sample(model, prompts, mask, cfg, seed)
        jax.block_until_ready(out.tokens)
        assert out.tokens.shape == (prompts.shape[0] * g, new_tokens) and int(out.mask.sum()) == out.mask.size
        return time.perf_counter() - t0

    res = {}
    for new_tokens in (1, r, r_long):
        if not new_tokens:
            continue
        compile_s = precompile(model, prompts, mask, config(new_tokens))
        times = [run(new_tokens, 1 + i) for i in range(repeats)]
        res[new_tokens] = dict(compile_s=compile_s, best_s=min(times), times_s=times)
        log(f"  ours R={new_tokens}: compile {compile_s:.2f}s, timed {', '.join(f'{t:.2f}' for t in times)}s")
    return res


def bench_hf(path, prompts, g, r, repeats, threads):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    ids = torch.tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(ids)
    kw = dict(do_sample=True, temperature=0.7, top_p=1.0, top_k=0, num_return_sequences=g, pad_token_id=0,
              eos_token_id=None)

    def run(new_tokens, seed):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, **kw)
        dt = time.perf_counter() - t0
        assert out.shape == (prompts.shape[0] * g, prompts.shape[1] + new_tokens), out.shape
        return dt

    warm = run(2, 0)
    times = [run(r, 1 + i) for i in range(repeats)]
    log(f"  HF warm-up {warm:.2f}s, R={r}: {', '.join(f'{t:.2f}' for t in times)}s")
    return dict(warmup_s=warm, best_s=min(times), times_s=times, threads=threads)


def write_markdown(out_path, results, args, command):
    import jax
    import torch
    import transformers

    lines = [BEGIN, "## Sampling (`tooln1.rollout.sampling`)", ""]
    lines += [
        "Rollout throughput of our jitted group sampler against transformers' `generate` (PyTorch, CPU), "
        f"both float32, in the same run: {args.prompts} prompts x {args.samples} samples, prompt "
        f"{args.prompt_len} tokens, {args.new_tokens} new tokens with EOS ignored, temperature 0.7, "
        "top-p 1, top-k off, random weights. tokens/s = prompts x samples x new tokens / wall time "
        "(compile and warm-up excluded; best of the timed repeats). Decode ms/token = "
        "(t(R) - t(R=1)) / (R - 1) for the whole batch of "
        f"{args.prompts * args.samples} rows, i.e. prefill excluded.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores visible "
        f"(load average {results['machine']['load_before']} before the run; this machine is shared with "
        "other jobs, so absolute figures are noisy, the ratio less so). jax "
        f"{jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}. "
        "No GPU was available to this session, so there are no accelerator (bf16, HBM roofline) figures yet.",
        "",
        "| model | ours tok/s | HF generate tok/s | ratio | our compile (s) | our decode ms/token, R="
        f"{args.new_tokens} | R={args.long_new_tokens} |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape, r in results["shapes"].items():
        ours, hf = r["ours"], r["hf"]
        n = args.prompts * args.samples * args.new_tokens
        ours_tps = n / ours[str(args.new_tokens)]["best_s"]
        hf_tps = n / hf["best_s"]
        t1 = ours["1"]["best_s"]
        dec = lambda R: (ours[str(R)]["best_s"] - t1) / (R - 1) * 1e3  # noqa: E731
        long = f"{dec(args.long_new_tokens):.1f}" if str(args.long_new_tokens) in ours else "-"
        compile_s = ours[str(args.new_tokens)]["compile_s"]
        lines.append(f"| {shape} | {ours_tps:.0f} | {hf_tps:.0f} | {ours_tps / hf_tps:.2f}x | {compile_s:.1f} | "
                     f"{dec(args.new_tokens):.1f} | {long} |")
    lines += ["", results.get("notes", ""), END, ""]
    text = "\n".join(lines)
    old = open(out_path).read() if os.path.exists(out_path) else "# Benchmarks\n\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(out_path, "w") as f:
        f.write(new)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="tiny,qwen2.5-0.5b")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--long-new-tokens", type=int, default=512)
    ap.add_argument("--long-shapes", default=None,
                    help="comma list of shapes that also run --long-new-tokens (default: all)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--ckpt-dir", default=os.path.join(tempfile.gettempdir(), "tooln1_bench_ckpts"))
    ap.add_argument("--out", default=None, help="markdown file to write the Sampling section into")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--notes", default="")
    args = ap.parse_args(argv)

    import numpy as np

    from tooln1.checkpoints.tiny import make_tiny_checkpoint, special_token_ids

    results = {"machine": dict(cpu=cpu_name(), cores=os.cpu_count(),
                               load_before=" ".join(f"{x:.1f}" for x in os.getloadavg())),
               "args": vars(args), "shapes": {}, "notes": args.notes}
    n_tok = max(special_token_ids().values()) + 1
    for shape in args.shapes.split(","):
        path = os.path.join(args.ckpt_dir, shape)
        if not os.path.exists(os.path.join(path, "config.json")):
            log(f"{shape}: writing random checkpoint to {path}")
            make_tiny_checkpoint(path, shape=shape if shape != "tiny" else None, seed=0)
        prompts = np.random.RandomState(0).randint(0, n_tok - 5, (args.prompts, args.prompt_len)).astype(np.int32)
        log(f"{shape}: ours")
        long = args.long_new_tokens if args.long_shapes is None or shape in args.long_shapes.split(",") else 0
        ours = bench_ours(path, prompts, args.samples, args.new_tokens, long, args.repeats)
        hf = None
        if not args.skip_hf:
            log(f"{shape}: transformers generate")
            hf = bench_hf(path, prompts, args.samples, args.new_tokens, args.repeats, args.threads)
        results["shapes"][shape] = {"ours": {str(k): v for k, v in ours.items()}, "hf": hf}
        n = args.prompts * args.samples * args.new_tokens
        msg = f"{shape}: ours {n / ours[args.new_tokens]['best_s']:.1f} tok/s"
        if hf:
            msg += f", HF {n / hf['best_s']:.1f} tok/s, ratio {hf['best_s'] / ours[args.new_tokens]['best_s']:.2f}x"
        log(msg)
    results["machine"]["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.out and not args.skip_hf:
        command = "python tools/bench_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_markdown(args.out, results, args, command)
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
