#!/usr/bin/env python
"""Where a rollout's device time goes, by part of the model: one `rollout.py` workload through the engine
under JAX's profiler, each executed XLA op attributed to its program (prefill, round) and to the named
scope it came from (`qkv`, `attend`, `kv_write`, `attention_out`, `mlp`, `logits`, `sample`; the model and
the engine's programs set them), from the compiled HLO's op metadata.

    python tools/bench/op_profile.py --workload apibank --smollm2 runs/smollm2/base

Per program it prints the seconds each scope's ops ran, summed over the threads that ran them, and that
sum beside the program's wall seconds: on a CPU, busy thread-seconds / wall is how many cores the
program kept busy. ``attend`` is the attention itself, without its ``kv_write``. Rounds compile one
decode width (``decode_widths=1``), so every round is the same program; ``--engine`` sets other
EngineConfig fields. The XLA dump and the trace go to a temporary folder (``--keep DIR`` keeps them).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import common
import rollout  # JAX-free at import: XLA_FLAGS is set before JAX loads

SCOPES = ("qkv", "attend", "kv_write", "attention_out", "mlp", "logits", "sample")
RUN_GAP = 2e-3  # seconds: the host's work between two runs of a program takes longer than a gap within one
CONTAINERS = re.compile(r"(while|cond|call|conditional)")  # ops that only run other ops: their time is counted there


def scope_of(op_name: str) -> str:
    """The innermost of `SCOPES` in an op's name path ("other" outside them)."""
    parts = op_name.split("/")
    return next((p for p in reversed(parts) if p in SCOPES), "other")


def _op_names(path: str) -> dict[str, str]:
    """{op: op_name} of one optimized HLO dump. An op without metadata of its own (XLA drops it from some
    rewritten dots) takes its fused computation's (its root's, else its first op's), else its first
    operand's that has one."""
    named: dict[str, str] = {}
    calls: dict[str, str] = {}  # fusion -> its computation
    inner: dict[str, str] = {}  # computation -> the op_name it carries
    operands: dict[str, list[str]] = {}
    computation = None
    for line in open(path):
        head = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{\s*$", line)
        if head:
            computation = head.group(1)
            continue
        m = re.match(r"\s*(ROOT )?%([\w.\-]+) = (.*)", line)
        if not m:
            continue
        root, op, rest = m.groups()
        name, called = re.search(r'op_name="([^"]+)"', rest), re.search(r"calls=%([\w.\-]+)", rest)
        if name:
            named[op] = name.group(1)
            if computation and (root or computation not in inner):
                inner[computation] = name.group(1)
        if called:
            calls[op] = called.group(1)
        operands[op] = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])

    def name_of(op: str, depth: int = 0) -> str:
        name = named.get(op) or inner.get(calls.get(op, ""), "")
        if name or depth > 4:
            return name
        return next((n for n in (name_of(x, depth + 1) for x in operands.get(op, [])) if n), "")

    return {op: name_of(op) for op in operands}


def op_scopes(dump_dir: str) -> dict[tuple[str, str], str]:
    """{(module, op): scope} from XLA's optimized HLO dumps in ``dump_dir``; an op name two dumps of one
    module attribute to different scopes maps to "?"."""
    out: dict[tuple[str, str], str] = {}
    for path in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")):
        module = re.search(r"module_\d+\.(.+?)\.\w+_after_optimizations\.txt$", os.path.basename(path))
        for op, name in (_op_names(path).items() if module else ()):
            key, scope = (module.group(1), op), scope_of(name)
            out[key] = scope if out.get(key, scope) == scope else "?"
    return out


def attribute(trace_dir: str, scopes: dict[tuple[str, str], str]) -> dict[str, dict[str, float]]:
    """{program: {scope: thread-seconds}} of every leaf op the trace holds, plus each program's "wall": the
    span of each of its runs, a run being ops with no gap over `RUN_GAP` seconds between them."""
    trace = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))[0]
    events = json.load(gzip.open(trace))["traceEvents"]
    out: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    spans: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for e in events:
        args = e.get("args", {})
        module, op = args.get("hlo_module"), args.get("hlo_op")
        if e.get("ph") != "X" or not module or not op:
            continue
        spans[module].append((e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6))
        if not CONTAINERS.match(op):
            out[module][scopes.get((module, op), "other")] += e["dur"] / 1e6
    for module, intervals in spans.items():
        intervals.sort()
        lo, hi = intervals[0]
        for start, end in intervals[1:] + [(float("inf"), float("inf"))]:
            if start > hi + RUN_GAP:
                out[module]["wall"] += hi - lo
                lo = start
            hi = max(hi, end)
    return out


def table(profile: dict[str, dict[str, float]]) -> str:
    rows = ["| program | wall s | busy thread-s | " + " | ".join(SCOPES + ("other",)) + " |",
            "|---|---|---|" + "---|" * (len(SCOPES) + 1)]
    for module in sorted(profile, key=lambda m: -profile[m]["wall"]):
        p = profile[module]
        busy = sum(v for k, v in p.items() if k != "wall")
        if busy < 0.01:
            continue
        shares = (f"{p.get(k, 0.0):.2f} ({100 * p.get(k, 0.0) / busy:.0f}%)" for k in SCOPES + ("other",))
        rows.append(f"| {module.removeprefix('jit_')} | {p['wall']:.2f} | {busy:.2f} | " + " | ".join(shares) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--workload", default="apibank", choices=sorted(rollout.WORKLOADS))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--smollm2", default=None, help="SmolLM2 HF checkpoint dir for the apibank workload")
    ap.add_argument("--engine", default="", help="EngineConfig fields, e.g. prefill_chunk=1024,prefill_block=128")
    ap.add_argument("--keep", default=None, help="keep the XLA dump and the trace in this folder")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="tooln1_profile_")
    dump = os.path.join(work, "xla")
    # before JAX loads: the optimized HLO (its op metadata names each op's scope)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$").strip()
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"  # a cached program is not dumped

    import jax

    from tooln1.checkpoints.hf_import import load_model
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig

    if args.engine:
        rollout._set_engine(args.engine, [args.workload])
    w = rollout.WORKLOADS[args.workload]
    ckpt, prompts, eos = rollout._setup(args.workload, args.smollm2)
    fields = {"num_slots": min(32, len(prompts) * w.group), "decode_widths": 1, **w.engine}
    engine = Engine(load_model(ckpt, dtype=args.dtype), EngineConfig(**fields))
    cfg = SamplingConfig(num_samples=w.group, max_new_tokens=w.cap, temperature=w.temperature, eos_ids=tuple(eos),
                         ignore_eos=w.ignore_eos)
    width = max(map(len, prompts))
    engine.generate(prompts, cfg, jax.random.key(1), max_prompt_len=width)  # compiles (and dumps) every program
    trace = os.path.join(work, "trace")
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # Python events would slow the host side and crowd out the ops' events
    with jax.profiler.trace(trace, profiler_options=options):
        t0 = time.perf_counter()
        engine.generate(prompts, cfg, jax.random.key(0), max_prompt_len=width)
        wall = time.perf_counter() - t0
    profile = attribute(trace, op_scopes(dump))
    print(f"`python tools/bench/op_profile.py --workload {args.workload} --dtype {args.dtype}"
          + (f" --engine {args.engine}" if args.engine else "") + f"`: {wall:.1f} s under the profiler "
          f"({engine.stats['decode_steps']} decode steps, {engine.stats['prefill_chunks']} prefill chunks); "
          "seconds by scope, summed over threads\n", file=sys.stderr)
    print(table(profile))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
