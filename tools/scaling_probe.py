#!/usr/bin/env python
"""Compile a model forward + backward for a TPU topology from this CPU machine and report what the
attention and layer work change: per-chip temp memory against sequence length, and lowered program
size and compile time against depth. Needs libtpu (``pip install "jax[tpu]==<jax version>"``, in a
venv of its own); no TPU. Writes one JSON line per compile.

    python tools/scaling_probe.py memory --preset qwen2.5-7b --layers 2 --lengths 2048,8192,12288
    python tools/scaling_probe.py depth --preset qwen2.5-0.5b --depths 2,24,28,48 --length 1024

The loss is the mean square of the final hidden states, so the figures are the decoder's own (the
vocabulary projection, chunked separately, does not enter). One row per chip on an fsdp mesh over
the topology, fp32 parameters, bf16 compute, remat on: the training step's layout. Run it with
``PYTHONPATH=<checkout>`` on two checkouts to compare before and after a change.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _compile(preset: str, layers: int, length: int, topology: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.experimental import topologies
    from jax.sharding import NamedSharding, PartitionSpec

    from tooln1.models import CausalLM, preset as model_preset
    from tooln1.sharding import make_mesh, state_shardings

    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    mesh = make_mesh({"fsdp": len(devices)}, devices=devices)
    config = model_preset(preset, num_layers=layers, remat=True, param_dtype="float32", dtype="bfloat16")
    model = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0), mesh=mesh))
    graphdef, params = nnx.split(model)
    shardings = state_shardings(params, mesh)

    def loss(p, ids):
        hidden = nnx.merge(graphdef, p).hidden_states(ids)
        return jnp.mean(hidden.astype(jnp.float32) ** 2)

    ids = jax.ShapeDtypeStruct((len(devices), length), jnp.int32,
                               sharding=NamedSharding(mesh, PartitionSpec("fsdp", None)))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
    start = time.perf_counter()
    lowered = jax.jit(jax.grad(loss)).lower(abstract, ids)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    return dict(preset=preset, layers=layers, length=length, topology=topology, chips=len(devices),
                temp_bytes=memory.temp_size_in_bytes, temp_gib=round(memory.temp_size_in_bytes / 2**30, 3),
                argument_bytes=memory.argument_size_in_bytes, program_chars=len(lowered.as_text()),
                lower_s=round(lower_s, 1), compile_s=round(time.perf_counter() - start, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["memory", "depth"])
    ap.add_argument("--preset", default="qwen2.5-0.5b")
    ap.add_argument("--topology", default="v5e:2x2")
    ap.add_argument("--layers", type=int, default=2, help="memory: layers compiled")
    ap.add_argument("--lengths", default="2048,8192,12288", help="memory: sequence lengths")
    ap.add_argument("--depths", default="2,24,28,48", help="depth: layer counts")
    ap.add_argument("--length", type=int, default=1024, help="depth: sequence length")
    args = ap.parse_args()
    if args.what == "memory":
        runs = [(args.layers, int(t)) for t in args.lengths.split(",")]
    else:
        runs = [(int(d), args.length) for d in args.depths.split(",")]
    for layers, length in runs:
        print(json.dumps(_compile(args.preset, layers, length, args.topology)), flush=True)


if __name__ == "__main__":
    main()
