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
``--top N`` also lists each program's N costliest kinds of op, with their scope.
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


def op_scopes(dump_dir: str, label=scope_of) -> dict[tuple[str, str], str]:
    """{(module, op): scope} from XLA's optimized HLO dumps in ``dump_dir`` (or another ``label`` of each op's
    name, e.g. `tail`); an op name two dumps of one module label differently maps to "?"."""
    out: dict[tuple[str, str], str] = {}
    for path in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")):
        module = re.search(r"module_\d+\.(.+?)\.\w+_after_optimizations\.txt$", os.path.basename(path))
        for op, name in (_op_names(path).items() if module else ()):
            key, value = (module.group(1), op), label(name)
            out[key] = value if out.get(key, value) == value else "?"
    return out


def tail(op_name: str) -> str:
    """The last two parts of an op's name path: what it computes, inside what."""
    return "/".join(op_name.split("/")[-2:])


def _op_events(trace_dir: str):
    """(module, op, start s, seconds) of every op the trace holds, containers (`CONTAINERS`) included."""
    trace = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))[0]
    for e in json.load(gzip.open(trace))["traceEvents"]:
        args = e.get("args", {})
        module, op = args.get("hlo_module"), args.get("hlo_op")
        if e.get("ph") == "X" and module and op:
            yield module, op, e["ts"] / 1e6, e["dur"] / 1e6


def busiest(trace_dir: str, scopes: dict[tuple[str, str], str], tails: dict[tuple[str, str], str],
            n: int) -> dict[str, list[tuple[str, str, int, float]]]:
    """{program: its ``n`` costliest kinds of op}: (scope, kind and `tail`, runs, thread-seconds), a kind being
    an op's HLO name without its number, told apart by its `tail` (every layer's copy of an op is one
    kind). Where a scope's time goes, op by op."""
    kinds: dict[str, dict[tuple[str, str], list]] = collections.defaultdict(lambda: collections.defaultdict(
        lambda: [0, 0.0]))  # {program: {(scope, kind): [runs, seconds]}}
    for module, op, _, dur in _op_events(trace_dir):
        if not CONTAINERS.match(op):
            kind = re.sub(r"\.\d+$", "", op)
            total = kinds[module][(scopes.get((module, op), "other"), f"{kind} {tails.get((module, op), '')}")]
            total[0], total[1] = total[0] + 1, total[1] + dur
    return {module: [(*key, runs, sec) for key, (runs, sec) in sorted(per.items(), key=lambda kv: -kv[1][1])[:n]]
            for module, per in kinds.items()}


def attribute(trace_dir: str, scopes: dict[tuple[str, str], str]) -> dict[str, dict[str, float]]:
    """{program: {scope: thread-seconds}} of every leaf op the trace holds, plus each program's "wall": the
    span of each of its runs, a run being ops with no gap over `RUN_GAP` seconds between them."""
    out: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    spans: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for module, op, start, dur in _op_events(trace_dir):
        spans[module].append((start, start + dur))
        if not CONTAINERS.match(op):
            out[module][scopes.get((module, op), "other")] += dur
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
    ap.add_argument("--top", type=int, default=0, help="also list each program's N costliest kinds of op")
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
    scopes = op_scopes(dump)
    profile = attribute(trace, scopes)
    print(f"`python tools/bench/op_profile.py --workload {args.workload} --dtype {args.dtype}"
          + (f" --engine {args.engine}" if args.engine else "") + f"`: {wall:.1f} s under the profiler "
          f"({engine.stats['decode_steps']} decode steps, {engine.stats['prefill_chunks']} prefill chunks); "
          "seconds by scope, summed over threads\n", file=sys.stderr)
    print(table(profile))
    if args.top:
        for module, ops in sorted(busiest(trace, scopes, op_scopes(dump, tail), args.top).items()):
            if module in profile and profile[module]["wall"] >= 0.5:
                print(f"\n| {module.removeprefix('jit_')}: scope | op (kind, name) | runs | thread-s |")
                print("|---|---|---|---|")
                print("\n".join(f"| {scope} | `{op}` | {runs} | {sec:.2f} |" for scope, op, runs, sec in ops))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
