"""Compile-only evidence for a prefill chunk's attention and the KV writes: the engine's prefill program (or
its decode round) compiled for a target (default one H100, no GPU needed) with each chunk-attention path
and each way of writing KV, and what its optimized HLO runs.

    JAX_PLATFORMS=cpu ~/venv-cuda/bin/python tools/prefill_hlo.py                 # tool-0.5b's engine, H100
    JAX_PLATFORMS=cpu ~/venv-cuda/bin/python tools/prefill_hlo.py --layers 2 --chunk 512
    TPU_SKIP_MDS_QUERY=1 python tools/prefill_hlo.py --target tpu-v5e-4 --paths blockwise,splash  # in jax[tpu]
    TPU_SKIP_MDS_QUERY=1 python tools/prefill_hlo.py --target tpu-v5e-4 --paths splash --writes tokens,rows
    TPU_SKIP_MDS_QUERY=1 python tools/prefill_hlo.py --target tpu-v5e-4 --program round --writes tokens,rows
    TPU_SKIP_MDS_QUERY=1 python tools/prefill_hlo.py --target tpu-v5e-4 --model qwen2.5-7b --paths splash,ragged

For each path ("blockwise": the portable loop; "pallas_gpu", "splash": `tooln1.models.chunk_attention`;
"ragged": the ragged pool and JAX's TPU kernel for prefill and decode, `tooln1.models.ragged_attention`) and
KV writes ("tokens", "rows": `tooln1.platform.decode_layout.kv_writes`) it prints the while loops (nesting
and trip count: XLA's ``known_trip_count``, else "dynamic"), the custom calls by target, and the kernels
launched per layer (fusions and custom calls inside the layer loop's body, once per trip of each loop
around them where XLA knows the trip count; a conditional's larger branch). A decode round's chunk
attention path does not matter (``--paths splash`` compiles it once).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_OP = re.compile(r" = .*? ([a-z][\w\-]*)\(")
_WHILE = re.compile(r"condition=%?([\w.\-]+), body=%?([\w.\-]+)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_BRANCHES = re.compile(r"(?:true_computation|false_computation)=%?([\w.\-]+)|branch_computations=\{([^}]*)\}")
_CUSTOM = re.compile(r'custom_call_target="([^"]+)"')
# instructions that launch nothing on a GPU (views, tuples, control flow counted through its computations)
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
         "opt-barrier", "after-all", "partition-id", "replica-id"}


def computations(hlo: str) -> dict[str, list[str]]:
    """The HLO module's computations: name -> instruction lines."""
    out: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and not line.startswith(" "):
            name = m.group(1)
            out[name] = []
        elif name and line.startswith(" "):
            out[name].append(line.strip())
    return out


def _trip_count(line: str, condition: list[str]) -> int | str:
    """A while loop's trip count: XLA:GPU's ``known_trip_count``, else (XLA:TPU) a condition that is only
    ``counter < constant`` (the counters JAX's loops start at 0), else "dynamic"."""
    known = _TRIPS.search(line)
    if known:
        return int(known.group(1))
    ops = [(_OP.search(i) or [None, ""])[1] for i in condition]
    bound = [re.search(r"constant\((\d+)\)", i) for i in condition]
    if sorted(op for op in ops if op not in ("parameter", "get-tuple-element")) == ["compare", "constant"] and any(
            "direction=LT" in i for i in condition):
        return int(next(b.group(1) for b in bound if b))
    return "dynamic"


def kernels(comps: dict[str, list[str]], name: str, loops: list[dict], depth: int = 0) -> Counter:
    """Kernels one run of computation ``name`` launches, by instruction (fusions, custom calls by target,
    unfused ops), each while body's multiplied by its known trip count and a conditional's larger branch
    counted; appends each while loop met to ``loops``."""
    count: Counter = Counter()
    for line in comps.get(name, []):
        op = _OP.search(line)
        kind = op.group(1) if op else ""
        if kind == "while":
            condition, body = _WHILE.search(line).groups()
            trips = _trip_count(line, comps.get(condition, []))
            loops.append({"depth": depth, "trips": trips, "body": body})
            for k, v in kernels(comps, body, loops, depth + 1).items():
                count[k] += v * (trips if isinstance(trips, int) else 1)
        elif kind == "conditional":
            names = [a or b for a, b in _BRANCHES.findall(line)]
            branches = [kernels(comps, n.strip().lstrip("%"), loops, depth) for ns in names for n in ns.split(",")]
            count.update(max(branches, key=lambda c: sum(c.values()), default=Counter()))
        elif kind == "custom-call":
            count["custom-call " + _CUSTOM.search(line).group(1)] += 1
        elif kind and kind not in _FREE:
            count[kind] += 1
    return count


def report(hlo: str, layers: int | None = None) -> dict:
    """The HLO's loops, custom calls and kernels; those of a layer: the body of the loop of ``layers`` trips
    (default: the first outermost loop of a known trip count; a decode round's is inside its step loop)."""
    comps = computations(hlo)
    entry = next(n for n in comps if re.search(rf"^ENTRY %?{re.escape(n)} ", hlo, re.M))
    loops: list[dict] = []
    total = kernels(comps, entry, loops)
    known = [lp for lp in loops if lp["trips"] == layers] or [
        lp for lp in loops if lp["depth"] == 0 and lp["trips"] != "dynamic"]
    layer_loop = known[0] if known else None
    per_layer = dict(kernels(comps, layer_loop["body"], [])) if layer_loop else {}
    return {"while_loops": [{k: v for k, v in lp.items() if k != "body"} for lp in loops],
            "custom_calls": dict(Counter(_CUSTOM.findall(hlo))), "kernels_per_program": dict(total),
            "kernels_per_layer": per_layer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="h100-80gb:1")
    ap.add_argument("--mesh", default="1,1,1", help="data,fsdp,tensor: the engine's mesh over the target's devices")
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--layers", type=int, default=0, help="fewer layers (0: the model's)")
    ap.add_argument("--chunk", type=int, default=8192, help="EngineConfig.prefill_chunk (tool-0.5b: 8192)")
    ap.add_argument("--block", type=int, default=256, help="EngineConfig.prefill_block (the blockwise path's)")
    ap.add_argument("--prompt", type=int, default=1196, help="longest prompt (tool-0.5b: 1,196) ...")
    ap.add_argument("--response", type=int, default=400, help="... and response: the context table's width")
    ap.add_argument("--slots", type=int, default=320)
    ap.add_argument("--paths", default="blockwise,pallas_gpu")
    ap.add_argument("--writes", default="", help="KV writes to compile, e.g. tokens,rows (default: the target's)")
    ap.add_argument("--program", default="prefill", choices=("prefill", "round"))
    ap.add_argument("--json", default="")
    ap.add_argument("--hlo", default="", help="a folder to write each compiled program's optimized HLO to")
    args = ap.parse_args()

    import numpy as np
    from jax.sharding import Mesh

    from tooln1.models.config import preset
    from tooln1.preflight.fit import abstract_model
    from tooln1.preflight.targets import get_target, target_devices
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig

    target = get_target(args.target)
    sizes = tuple(int(n) for n in args.mesh.split(","))
    mesh = Mesh(np.array(target_devices(target)[:int(np.prod(sizes))]).reshape(sizes), ("data", "fsdp", "tensor"))
    overrides = dict(dtype=args.dtype, **({"num_layers": args.layers} if args.layers else {}))
    model = abstract_model(preset(args.model, **overrides), mesh)
    engine = Engine(model, EngineConfig(num_slots=args.slots, prefill_chunk=args.chunk, prefill_block=args.block))
    sampling = SamplingConfig(num_samples=1, max_new_tokens=args.response, engine=engine.config)
    results = {}
    for path in args.paths.split(","):
        for writes in args.writes.split(",") if args.writes else [engine.layout.kv_writes]:
            name = f"{path} {writes}"
            engine.layout = dataclasses.replace(engine.layout, prefill_attention=path, kv_writes=writes,
                                                kv_pool="ragged" if path == "ragged" else "split")
            start = time.time()
            compiled = engine.lower(sampling, args.slots, args.prompt, program=args.program).compile()
            if args.hlo:
                with open(os.path.join(args.hlo, f"{args.program}_{path}_{writes}.hlo"), "w") as f:
                    f.write(compiled.as_text())
            shape = engine.shape(sampling, args.slots, args.prompt)
            results[name] = {"compile_s": round(time.time() - start, 1), "context_slots": shape.context_pages
                             * shape.page_size, "chunk": shape.chunk, "slots": shape.slots,
                             "temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1),
                             **report(compiled.as_text(), engine.model_config.num_layers)}
            print(name, json.dumps(results[name], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "paths": results}, f, indent=1)


if __name__ == "__main__":
    main()
