"""``tooln1-fit``: compile every program a run would compile, for its target, on a CPU machine.

    tooln1-fit --config configs/paper.py:model=qwen2.5-7b,mesh=tpu-v5p-128 --json fit.json
    tooln1-fit --config configs/paper.py:mesh=tpu-v4-32 --target tpu-v5p-32 --programs update --layers 2
    tooln1-fit --config configs/paper.py:model=qwen2.5-7b,mesh=gpu8      # 8 x H100 (needs jax[cuda12], no GPU)

No weights are read: the model is abstract (``nnx.eval_shape``; shapes from ``config.model.path``'s
config.json when it exists, else the ``config.model.preset``), its params ``ShapeDtypeStruct``s
sharded over the mesh of the target's compile-only devices (:mod:`tooln1.preflight.targets`; the mesh
preset names its target in ``config.mesh.target``). Each program is lowered through the pieces'
public hooks (:func:`tooln1.rollout.sampling.lower`, :meth:`tooln1.training.updater.Updater.lower`,
:meth:`~tooln1.training.updater.Updater.lower_logprobs`) at the config's batch sizes and maximum lengths,
compiled, and its per-device memory read from ``compiled.memory_analysis()``:

    peak = arguments + outputs − aliased + temporaries

A program fits when ``peak + resident`` ≤ the chip's HBM (``peak``: the larger of the sum and the
``peak_memory_in_bytes`` XLA reports, which on TPU can exceed it), where ``resident`` is what the training
loop keeps on the devices while the program runs without passing it in: during rollouts the training model
(with LoRA the frozen base too), the optimizer state and an on-device reference (held in the compute dtype);
during log-prob passes the optimizer state and the policy or reference not passed; during the update the
reference; during validation, which samples through an engine of its own, also the rollout engine's
decoding copy. A LoRA run is built as the trainer builds it: the base in the compute dtype (or int8 / int4),
adapters in ``model.dtype``. XLA:TPU refuses a
program over its HBM (the entry then has ``compile_error``); XLA:GPU compiles it anyway, so there the
verdict is this comparison alone, against the memory JAX's allocator gets
(:func:`tooln1.preflight.targets.usable_gpu_bytes`).
FLOPs are analytic (``tooln1.training.metrics`` model: 2·params per token plus attention; XLA's cost analysis
counts a loop body once, and is absent for compile-only GPUs) and global, over all devices. A rollout is two
programs, its prefill chunk and its decode round (at its widest), compiled at the largest prompt bucket
(memory grows with the bucket). Exit status 0 iff every program fits, 1 if one does not, 2 on a
bad config or target.

Each program also gets its roofline (:mod:`tooln1.preflight.roofline`): the HBM bytes it must move, the
times its FLOPs and bytes take at the target's peak FLOP/s and bandwidth, the bound that wins; the report's
``roofline.step_seconds`` sums a GRPO step's programs (every decode round, the prefill, the log-prob passes,
the update). ``--roofline_only=1`` computes these from the config's shapes alone, without devices or compiles.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

from tooln1.preflight import roofline
from tooln1.preflight.targets import GPUS, GiB, Target, TargetError, get_target, prepare_environment, target_devices


class FitError(ValueError):
    """A config the tool cannot plan for; the message names the key."""


@dataclasses.dataclass
class Program:
    """One program of a run: how to lower it and what it keeps resident besides its arguments."""

    name: str
    shapes: dict[str, Any]
    lower: Callable[[], Any]  # -> jax.stages.Lowered
    flops: float
    resident_bytes: int = 0
    cost: roofline.Cost | None = None  # its work in one GRPO step (a validation: one pass over its batch)
    kind: str = ""  # its key in program_costs


# --------------------------------------------------------------------------------------------
# model, mesh, abstract inputs


def model_config(cfg: Any, layers: int | None = None) -> Any:
    """The ModelConfig of ``cfg.model`` without reading weights (config.json, else the preset)."""
    from tooln1.config.runtime import base_dtype, lora_options
    from tooln1.models import PRESETS, ModelConfig

    m = cfg.model
    dtypes = dict(param_dtype=base_dtype(m), dtype=m.compute_dtype, remat=bool(m.remat), remat_policy=m.remat_policy,
                  attention=m.attention, scan_layers=bool(m.scan_layers), frozen_layers=int(m.frozen_layers),
                  **lora_options(m))
    config_json = os.path.join(m.path, "config.json") if m.path else ""
    if config_json and os.path.isfile(config_json):
        with open(config_json, encoding="utf-8") as f:
            config = ModelConfig.from_hf(json.load(f), **dtypes)
    elif m.tiny.enabled:
        from tooln1.checkpoints.tiny import special_token_ids

        t = m.tiny
        config = ModelConfig(max(special_token_ids().values()) + 1, t.hidden, t.intermediate, t.layers, t.heads,
                             t.kv_heads, t.hidden // t.heads, **dtypes)
    elif m.preset in PRESETS:
        config = PRESETS[m.preset].replace(**dtypes)
    else:
        raise FitError(f"config.model: no config.json at {m.path!r} and preset {m.preset!r} is not one of "
                       f"{sorted(PRESETS)}")
    return config.replace(num_layers=layers) if layers else config


def make_target_mesh(cfg: Any, devices: Sequence[Any]) -> Any:
    from tooln1.sharding import make_mesh

    shape = {"data": int(cfg.mesh.data), "fsdp": int(cfg.mesh.fsdp), "tensor": int(cfg.mesh.tensor)}
    if -1 not in shape.values() and math.prod(shape.values()) < len(devices):
        devices = devices[: math.prod(shape.values())]  # as train.py: a smaller mesh on the first devices
    try:
        return make_mesh(shape, devices=devices)
    except ValueError as e:
        raise FitError(f"config.mesh {shape}: {e}") from None


def abstract_model(config: Any, mesh: Any, adapter_dtype: Any = None) -> Any:
    """A CausalLM whose params are ``ShapeDtypeStruct``s carrying their mesh shardings. A config with
    adapters is built as a run builds it: the base, then `add_adapters` in ``adapter_dtype`` (a run's
    ``model.dtype``; default the base's dtype)."""
    import jax
    from flax import nnx

    from tooln1.models import CausalLM
    from tooln1.models.lora import add_adapters
    from tooln1.sharding import state_shardings

    def build() -> Any:
        if not config.lora_rank:
            return CausalLM(config, rngs=nnx.Rngs(0), mesh=mesh)
        base = CausalLM(config.replace(lora_rank=0, base_quantization="none"), rngs=nnx.Rngs(0), mesh=mesh)
        return add_adapters(base, config.lora_rank, config.lora_alpha, config.lora_targets, config.base_quantization,
                            dtype=adapter_dtype or config.param_dtype)

    model = nnx.eval_shape(build)
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    return nnx.merge(graphdef, state)


def batch_struct(mesh: Any, rows: int, *rest: int, dtype: Any = "int32") -> Any:
    """A ``ShapeDtypeStruct`` laid out as ``tooln1.data.iterator.global_array`` lays out batches."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    axes = tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1)
    shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    spec = PartitionSpec(axes if axes and rows % shards == 0 else None, *([None] * len(rest)))
    return jax.ShapeDtypeStruct((rows, *rest), np.dtype(dtype), sharding=NamedSharding(mesh, spec))


def device_bytes(tree: Any, dtype: Any = None) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct``s / arrays (the largest shard),
    its float leaves counted in ``dtype`` when given (a copy cast to it). Sub-byte integers (int4) are
    packed two to a byte, as XLA stores them."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        kind = dtype if dtype is not None and jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x.dtype
        total += -(-int(np.prod(shape, dtype=np.int64)) * jax.dtypes.itemsize_bits(kind) // 8)
    return total


# --------------------------------------------------------------------------------------------
# the programs of a run

IN_STEP = ("rollout round", "rollout prefill", "logprobs", "update")  # what one GRPO step runs


def layout_of(cfg: Any, num_devices: int) -> roofline.Layout:
    """The roofline's view of ``cfg.mesh`` on ``num_devices`` devices (one ``-1`` axis takes the rest)."""
    shape = {a: int(cfg.mesh[a]) for a in ("data", "fsdp", "tensor")}
    known = math.prod(v for v in shape.values() if v != -1)
    shape = {a: (num_devices // known if v == -1 else v) for a, v in shape.items()}
    return roofline.Layout(math.prod(shape.values()), shape["tensor"], shape["fsdp"])


def program_costs(cfg: Any, config: Any, layout: roofline.Layout) -> dict[str, roofline.Cost]:
    """Each program's roofline cost, analytic from the config's shapes (no compile): a rollout's
    decode rounds and prefill, the log-prob passes, the update (:data:`IN_STEP`), and validation's."""
    import jax.numpy as jnp

    from tooln1.config import runtime
    from tooln1.rollout.engine import EngineConfig
    from tooln1.rollout.sampling import bucket_length

    grpo, engine = cfg.grpo, EngineConfig()
    item = jnp.dtype(config.dtype).itemsize
    p = bucket_length(cfg.data.max_prompt_tokens, runtime.prompt_buckets(cfg))

    def slots(samples: int, per_shard: int) -> int:  # as the engine: a shard's share, at most its slots
        return layout.shards * min(math.ceil(samples / layout.shards), per_shard or engine.max_slots)

    out: dict[str, roofline.Cost] = {}
    if grpo.enabled:
        g, r, n = grpo.group_size, grpo.max_response_tokens, grpo.batch_size * grpo.group_size
        rows, seq = (n // g, p + g * r) if grpo.share_prompt else (n, p + r)
        out["rollout round"], _ = roofline.decode(config, n, p, r, slots(n, grpo.rollout_slots), engine.page_size,
                                                  layout, item)
        out["rollout prefill"] = roofline.prefill(config, grpo.batch_size, p, engine.prefill_chunk, layout, item)
        loss = runtime.grpo_loss(grpo)
        passes = int(not loss.on_policy) + int(grpo.kl_coef > 0)
        if passes:
            micro = math.ceil(n / runtime.logprob_micro_batch(grpo))
            out["logprobs"] = roofline.logprobs(config, rows, seq, micro, layout, item) * passes
        mini = grpo.num_mini_batches
        micro = math.ceil(n / mini / grpo.micro_batch_size) if grpo.micro_batch_size else 1
        out["update"] = roofline.update(config, rows, seq, mini, micro, layout, item)
    b, r = cfg.eval.batch_size, cfg.eval.max_new_tokens
    out["validation rollout"], _ = roofline.decode(config, b, p, r, slots(b, cfg.eval.rollout_slots),
                                                   engine.page_size, layout, item)
    out["validation prefill"] = roofline.prefill(config, b, p, engine.prefill_chunk, layout, item)
    return out


def roofline_report(costs: dict[str, roofline.Cost], target: Target) -> dict[str, Any] | None:
    """Each cost's bound on ``target``'s peaks and a GRPO step's predicted seconds (None: no peaks)."""
    if not target.peak_flops or not target.hbm_bandwidth:
        return None
    bounds = {kind: roofline.bound(c, target.peak_flops, target.hbm_bandwidth) for kind, c in costs.items()}
    step = [bounds[k] for k in IN_STEP if k in bounds]
    return {"peak_flops": target.peak_flops, "hbm_bandwidth": target.hbm_bandwidth, "programs": bounds,
            "step_seconds": roofline.step_seconds(step) if step else None}


def plan(cfg: Any, model: Any, mesh: Any, programs: str = "") -> list[Program]:
    """Every program a run of ``cfg`` compiles (filtered by comma-separated name substrings)."""
    # after prepare_environment: these import JAX, which must see the target's flags
    from tooln1.config import runtime
    from tooln1.models.flops import decode_flops, forward_flops, prefill_flops
    from tooln1.rollout.engine import Engine
    from tooln1.rollout.sampling import bucket_length
    from tooln1.rollout.sampling import lower as lower_sampler
    from tooln1.training.updater import Updater

    config = model.config
    out: list[Program] = []
    grpo, sft = cfg.grpo, cfg.sft
    layout = roofline.Layout(mesh.size, mesh.shape.get("tensor", 1), mesh.shape.get("fsdp", 1))
    costs = program_costs(cfg, config, layout)
    # the largest prompt bucket in use is the worst case; which eos/pad ids does not change the program
    p = bucket_length(cfg.data.max_prompt_tokens, runtime.prompt_buckets(cfg))

    if grpo.enabled:
        g, r = grpo.group_size, grpo.max_response_tokens
        n = grpo.batch_size * g
        loss = runtime.grpo_loss(grpo)
        updater = Updater(model, loss, runtime.optimizer_config(grpo.optimizer),
                          num_mini_batches=grpo.num_mini_batches, micro_batch_size=grpo.micro_batch_size or None)
        state = updater.abstract_state()
        params_b, opt_b = device_bytes(state.params), device_bytes(state.opt_state)
        # the reference copies the trained params (with adapters: the adapters) in the compute dtype
        ref_b = device_bytes(state.params, config.dtype) if grpo.kl_coef > 0 and not grpo.ref_offload else 0
        batch = {"prompt_ids": batch_struct(mesh, n, p), "prompt_mask": batch_struct(mesh, n, p),
                 "response_ids": batch_struct(mesh, n, r), "response_mask": batch_struct(mesh, n, r),
                 "advantages": batch_struct(mesh, n, dtype="float32")}
        for key in ("old_logprobs", "ref_logprobs"):
            if key in loss.required_keys:
                batch[key] = batch_struct(mesh, n, r, dtype="float32")
        sampling = runtime.rollout_sampling(cfg, (0,), 0)
        # the engine decodes its own copy (cast, laid out, adapters merged): the training model (trained
        # params and, with adapters, the frozen base) stays beside it; counted whole, an upper bound
        # where the copy shares an array already in the compute dtype
        during_rollout = params_b + device_bytes(updater.rest) + opt_b + ref_b
        shape = {"prompts": grpo.batch_size, "group_size": g, "prompt_len": p, "response_len": r}
        out.append(Program(
            f"rollout engine round (B={grpo.batch_size}, G={g}, P={p}, R={r})", shape,
            lambda: lower_sampler(model, sampling, grpo.batch_size, p),
            decode_flops(config, grpo.batch_size, g, p, r), during_rollout, costs["rollout round"], "rollout round"))
        out.append(Program(
            f"rollout engine prefill (B={grpo.batch_size}, G={g}, P={p}, R={r})", shape,
            lambda: lower_sampler(model, sampling, grpo.batch_size, p, program="prefill"),
            prefill_flops(config, grpo.batch_size, p), during_rollout, costs["rollout prefill"], "rollout prefill"))
        lp_micro = runtime.logprob_micro_batch(grpo)
        rows, seq = (n // g, p + g * r) if grpo.share_prompt else (n, p + r)
        passes = [x for x, on in (("old", not loss.on_policy), ("ref", grpo.kl_coef > 0)) if on]
        if passes:  # old and reference log-probs are one program (same shapes), run once per pass
            out.append(Program(
                f"logprobs {'+'.join(passes)} (N={n}, P={p}, R={r}, micro {lp_micro})",
                {"rows": n, "prompt_len": p, "response_len": r, "micro_batch_size": lp_micro},
                lambda: updater.lower_logprobs(batch, lp_micro),
                forward_flops(config, rows * seq, seq), opt_b + (params_b if grpo.kl_coef > 0 else 0),
                costs["logprobs"], "logprobs"))
        out.append(Program(
            f"update (N={n}, P={p}, R={r}, {grpo.num_mini_batches} mini-batches, "
            f"micro {grpo.micro_batch_size or 'all'})",
            {"rows": n, "prompt_len": p, "response_len": r, "num_mini_batches": grpo.num_mini_batches,
             "micro_batch_size": grpo.micro_batch_size},
            lambda: updater.lower(batch), 3 * forward_flops(config, rows * seq, seq),
            ref_b, costs["update"], "update"))
        # validation samples through an engine of its own, beside the rollout engine's decoding copy
        val_resident = during_rollout + device_bytes(Engine(model, sampling.engine).weights)
    else:
        val_resident = 0
    if sft.enabled:
        t = sft.max_seq_len
        sft_updater = Updater(model, runtime.sft_loss(sft), runtime.optimizer_config(sft.optimizer),
                              num_mini_batches=1, micro_batch_size=sft.micro_batch_size or None)
        sft_batch = {k: batch_struct(mesh, sft.batch_size, t) for k in ("input_ids", "attention_mask", "loss_mask")}
        out.append(Program(
            f"sft update (N={sft.batch_size}, T={t}, micro {sft.micro_batch_size or 'all'})",
            {"rows": sft.batch_size, "seq_len": t, "micro_batch_size": sft.micro_batch_size},
            lambda: sft_updater.lower(sft_batch), 3 * forward_flops(config, sft.batch_size * t, t)))
        if not grpo.enabled:
            sft_state = sft_updater.abstract_state()
            val_resident = device_bytes((sft_state, sft_updater.rest))
    val = runtime.validation_sampling(cfg, (0,), 0)
    shape = {"prompts": cfg.eval.batch_size, "prompt_len": p, "response_len": cfg.eval.max_new_tokens}
    out.append(Program(
        f"validation rollout (B={cfg.eval.batch_size}, P={p}, R={cfg.eval.max_new_tokens}, greedy)", shape,
        lambda: lower_sampler(model, val, cfg.eval.batch_size, p),
        decode_flops(config, cfg.eval.batch_size, 1, p, cfg.eval.max_new_tokens), val_resident,
        costs["validation rollout"], "validation rollout"))
    out.append(Program(
        f"validation prefill (B={cfg.eval.batch_size}, P={p}, R={cfg.eval.max_new_tokens}, greedy)", shape,
        lambda: lower_sampler(model, val, cfg.eval.batch_size, p, program="prefill"),
        prefill_flops(config, cfg.eval.batch_size, p), val_resident, costs["validation prefill"], "validation prefill"))
    wanted = [w.strip() for w in programs.split(",") if w.strip()]
    return [prog for prog in out if not wanted or any(w in prog.name for w in wanted)]


# --------------------------------------------------------------------------------------------
# measuring one program

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(.*?\)|\S+)\s+([\w\-]+)\(")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_NOT_BUFFERS = ("parameter", "get-tuple-element", "bitcast", "tuple", "while", "conditional", "call")


def largest_buffers(hlo_text: str, top: int = 5) -> list[dict[str, Any]]:
    """The largest array values of an optimised (per-device) HLO module, outside fusion bodies,
    with how many values of that shape and origin there are (``count``).

    memory_analysis() gives totals only; this names what dominates them (shape, op, and the JAX
    op that produced it). Multi-output fusions count each of their arrays."""
    found: dict[tuple, dict[str, Any]] = {}
    in_fusion = False
    for line in hlo_text.splitlines():
        if line and not line[0].isspace():  # a computation header (or its closing brace)
            in_fusion = "fused" in line.split("(")[0] or line.startswith("%fused") or "fusion" in line.split(" ")[0]
            continue
        m = None if in_fusion else _INSTRUCTION.match(line)
        if not m or m.group(3) in _NOT_BUFFERS:
            continue
        op = _OP_NAME.search(line)
        source = op.group(1) if op else ""
        for dtype, dims_text in _ARRAY.findall(m.group(2)):
            if dtype not in _DTYPE_BYTES:
                continue
            dims = [int(d) for d in dims_text.split(",") if d]
            key = (dtype, tuple(dims), source or m.group(3))
            if key in found:
                found[key]["count"] += 1
            else:
                found[key] = {"bytes": math.prod(dims) * _DTYPE_BYTES[dtype], "count": 1,
                              "shape": f"{dtype}[{','.join(map(str, dims))}]", "instruction": m.group(1),
                              "op": m.group(3), "source": source}
    return sorted(found.values(), key=lambda b: -b["bytes"])[:top]


_MLIR_TENSOR = re.compile(r"stablehlo\.([\w.]+).*->\s*tensor<([\dx]+)x(f32|bf16|f16|i32|i64|i8|i1)>")
_MLIR_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "i64": 8, "i8": 1, "i1": 1}
_OOM = re.compile(r"(?:temporaries|program|Used)\D*?([\d.]+)\s*([KMGT])")


def largest_global_values(mlir_text: str, top: int = 5) -> list[dict[str, Any]]:
    """The largest op results of a lowered (not yet partitioned) module, at their global shapes:
    what is left to name the culprits when the compiler refuses a program that does not fit."""
    found: dict[tuple, dict[str, Any]] = {}
    for m in _MLIR_TENSOR.finditer(mlir_text):
        dims = [int(d) for d in m.group(2).split("x")]
        key = (m.group(1), m.group(3), tuple(dims))
        found.setdefault(key, {"bytes": math.prod(dims) * _MLIR_BYTES[m.group(3)], "op": m.group(1),
                               "shape": f"{m.group(3)}[{','.join(map(str, dims))}]", "scope": "global"})
    return sorted(found.values(), key=lambda b: -b["bytes"])[:top]


def _out_of_memory(program: Program, lowered: Any, error: Exception, seconds: float, hlo_chars: int,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """The entry of a program the compiler refused for lack of memory (XLA:TPU checks HBM itself)."""
    msg = str(error).strip().splitlines()[0]
    m = _OOM.search(msg)
    need = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2))) if m else 0
    say(f"  {seconds:.1f} s: the compiler ran out of memory: {msg}")
    entry = {"name": program.name, "shapes": program.shapes, "argument_bytes": 0, "output_bytes": 0,
             "alias_bytes": 0, "temp_bytes": need, "peak_bytes": need, "fits": False, "flops": program.flops,
             "compile_seconds": round(seconds, 2), "resident_bytes": program.resident_bytes,
             "xla_peak_bytes": need, "hlo_chars": hlo_chars, "compile_error": msg,
             "largest_buffers": largest_global_values(lowered.as_text())}
    for buf in entry["largest_buffers"]:
        say(f"    {buf['bytes'] / GiB:8.2f} GiB  {buf['shape']}  {buf['op']}  (global shape, before partitioning)")
    return entry


# XLA:GPU without a GPU cannot autotune its Triton GEMM fusions and, for some small dots, finds no
# tiling at all (jax 0.10.2); a real compile would have fallen back to cuBLAS, as the retry does.
_GPU_NO_TILING = "Couldn't find output tile sizes"
_GPU_CUBLAS_ONLY = {"xla_gpu_enable_triton_gemm": False}


def measure(program: Program, hbm_bytes: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Lower and compile one program; its memory figures as the JSON entry."""
    t0 = time.perf_counter()
    lowered = program.lower()
    hlo_chars = len(lowered.as_text())
    options: dict[str, Any] = {}
    try:
        try:
            compiled = lowered.compile()
        except Exception as e:
            if _GPU_NO_TILING not in str(e):
                raise
            say(f"  XLA:GPU found no Triton GEMM tiling without a GPU; compiling again with {_GPU_CUBLAS_ONLY}")
            options = _GPU_CUBLAS_ONLY
            compiled = lowered.compile(compiler_options=options)
    except Exception as e:  # XLA:TPU refuses programs that exceed the chip's HBM (XLA:GPU does not)
        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
            raise
        return _out_of_memory(program, lowered, e, time.perf_counter() - t0, hlo_chars, say)
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    args, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    peak = args + out - alias + temp
    # TPU also reports its own peak, which can exceed the sum (its temp_size is 0 for some loops)
    xla_peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
    fits = max(peak, xla_peak) + program.resident_bytes <= hbm_bytes
    entry = {"name": program.name, "shapes": program.shapes, "argument_bytes": args, "output_bytes": out,
             "alias_bytes": alias, "temp_bytes": temp, "peak_bytes": peak, "fits": fits, "flops": program.flops,
             "compile_seconds": round(seconds, 2), "resident_bytes": program.resident_bytes,
             "xla_peak_bytes": xla_peak, "hlo_chars": hlo_chars}
    if options:
        entry["compiler_options"] = options
    resident = f" + resident {program.resident_bytes / GiB:.2f}" if program.resident_bytes else ""
    xla = f" (XLA's peak {xla_peak / GiB:.2f})" if xla_peak > peak else ""
    say(f"  {seconds:.1f} s: peak {peak / GiB:.2f}{xla}{resident} GiB of {hbm_bytes / GiB:.1f} GiB per device "
        f"(args {args / GiB:.2f}, out {out / GiB:.2f}, alias {alias / GiB:.2f}, temp {temp / GiB:.2f}), "
        f"{program.flops / 1e12:.1f} TFLOP: {'fits' if fits else 'DOES NOT FIT'}")
    if not fits:
        entry["largest_buffers"] = largest_buffers(compiled.as_text())
        for buf in entry["largest_buffers"]:
            say(f"    {buf['bytes'] / GiB:8.2f} GiB x {buf['count']}  {buf['shape']}  {buf['op']}  {buf['source']}")
    return entry


# --------------------------------------------------------------------------------------------
# the whole check


def total_bytes(entry: dict[str, Any]) -> int:
    """What a program needs on one device: its peak (or XLA's, if larger) plus what stays resident."""
    return max(entry["peak_bytes"], entry["xla_peak_bytes"]) + entry["resident_bytes"]


def _say_roofline(name: str, b: dict[str, Any], say: Callable[[str], None]) -> None:
    say(f"  roofline {name}: {b['flops'] / 1e12:.1f} TFLOP, {b['hbm_bytes'] / GiB:.2f} GiB HBM per device: "
        f"compute {b['compute_seconds']:.3f} s, memory {b['memory_seconds']:.3f} s: {b['bound']}-bound")


def _say_step(report: dict[str, Any] | None, say: Callable[[str], None]) -> None:
    if report and report["step_seconds"] is not None:
        say(f"roofline: {report['step_seconds']:.2f} s per GRPO step ({' + '.join(IN_STEP)}) at "
            f"{report['peak_flops'] / 1e12:.0f} TFLOP/s and {report['hbm_bandwidth'] / 1e12:.2f} TB/s per device")


def fit_roofline(cfg: Any, target: Target, layers: int | None = None,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """The roofline alone, from the config's shapes: no devices, no compiles."""
    config = model_config(cfg, layers)
    costs = program_costs(cfg, config, layout_of(cfg, target.num_devices))
    report = roofline_report(costs, target)
    if report is None:
        raise FitError(f"target {target.name} has no peak FLOP/s and bandwidth for a roofline")
    for name, b in report["programs"].items():
        _say_roofline(name, b, say)
    _say_step(report, say)
    return {"target": target.describe(), "roofline": report}


def fit(cfg: Any, target: Target | str | None = None, *, programs: str = "", layers: int | None = None,
        hbm_bytes: int | None = None, roofline_only: bool = False,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Compile every program of ``cfg`` for ``target`` (default ``cfg.mesh.target``); the report dict.

    ``programs``: comma-separated name substrings to select; ``layers``: override the depth;
    ``hbm_bytes``: override the target's memory per device; ``roofline_only``: the roofline alone
    (:func:`fit_roofline`), without compiling."""
    if target is None:
        target = cfg.mesh.get("target", "") or ""
        if not target:
            raise FitError(f"config.mesh.target is empty (mesh preset {cfg.mesh.get('preset', '')!r}); pass --target")
    if isinstance(target, str):
        target = get_target(target)
    if hbm_bytes:
        target = dataclasses.replace(target, hbm_bytes=int(hbm_bytes))
    if roofline_only:
        return fit_roofline(cfg, target, layers, say)
    devices = target_devices(target)
    mesh = make_target_mesh(cfg, devices)
    config = model_config(cfg, layers)
    model = abstract_model(config, mesh, cfg.model.dtype)
    progs = plan(cfg, model, mesh, programs)
    if not progs:
        raise FitError(f"--programs {programs!r} selects none of this config's programs")
    described = {**target.describe(), "num_devices": len(devices)}
    if target.platform == "cuda":  # what a run's allocator gets of the device's memory
        total = GPUS[target.gpu].memory_bytes
        described["device_memory_bytes"] = total
        memory = (f"{target.hbm_bytes / GiB:.1f} of its {total / GiB:.1f} GiB each "
                  f"(XLA_PYTHON_CLIENT_MEM_FRACTION {target.hbm_bytes / total:.2f})")
    else:
        memory = f"{target.hbm_bytes / GiB:.1f} GiB each"
    say(f"target {target.name}: {len(devices)} x {target.device_kind}, {memory}; "
        f"mesh {dict(mesh.shape)}; model {config.num_layers} layers, d {config.hidden_size}; {len(progs)} programs")
    costs = {prog.kind: prog.cost for prog in progs if prog.cost is not None}
    rooflines = roofline_report(costs, target)
    entries = []
    for i, prog in enumerate(progs, 1):
        say(f"[{i}/{len(progs)}] compiling {prog.name} ...")
        entry = measure(prog, target.hbm_bytes, say)
        if rooflines and prog.kind in rooflines["programs"]:
            entry["roofline"] = rooflines["programs"][prog.kind]
            _say_roofline(prog.kind, entry["roofline"], say)
        entries.append(entry)
    report = {"target": described, "fits": all(e["fits"] for e in entries), "programs": entries}
    if rooflines:
        report["roofline"] = rooflines
        _say_step(rooflines, say)
    worst = max(entries, key=total_bytes)
    say(f"{'fits' if report['fits'] else 'DOES NOT FIT'}: worst {worst['name']}: "
        f"{total_bytes(worst) / GiB:.2f} GiB of {target.hbm_bytes / GiB:.1f} GiB")
    return report


# --------------------------------------------------------------------------------------------
# command line


def _say(msg: str) -> None:
    print(f"[tooln1-fit] {msg}", file=sys.stderr, flush=True)


# name, default (its type picks the absl flag), help
FLAGS = (
    ("json", "", "write the report to this JSON file"),
    ("target", "", "compile target (default: config.mesh.target); see tooln1.preflight.targets"),
    ("programs", "", "only programs whose name contains one of these comma-separated words"),
    ("layers", 0, "override the model's layer count (scaling studies)"),
    ("hbm_gib", 0.0, "override the target's memory per device, GiB"),
    ("roofline_only", 0, "1: only the roofline (analytic FLOPs, HBM bytes, seconds per GRPO step), no compile"),
)
SUMMARY = ("Compile every program a run of the config would compile, for its target, on this (CPU) machine, and "
           "say whether each fits the device memory. Exit status 0 iff every program fits, 1 if one does not, "
           "2 on a bad config or target.")


def _absl_main(argv: Sequence[str]) -> None:
    from absl import flags

    f = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"tooln1-fit: unexpected arguments {argv[1:]}")
    if f.config is None:
        raise SystemExit("tooln1-fit: --config is required, e.g. --config configs/paper.py:mesh=tpu-v5p-128")
    try:
        report = fit(f.config, f.target or None, programs=f.programs, layers=f.layers or None,
                     hbm_bytes=int(f.hbm_gib * GiB) if f.hbm_gib else None, roofline_only=bool(f.roofline_only),
                     say=_say)
    except (FitError, TargetError, ValueError, KeyError) as e:
        print(f"tooln1-fit: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if f.json:
        with open(f.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    raise SystemExit(0 if report.get("fits", True) else 1)  # a roofline alone has no verdict


def main(argv: Sequence[str] | None = None) -> None:
    """``tooln1-fit --config FILE[:spec] [--config.key=value ...] [--json FILE] [--target NAME]``."""
    from tooln1.config.files import define_config_flag
    from tooln1.config.reference import shown, usage, wants_help

    if wants_help(sys.argv[1:] if argv is None else argv[1:]):
        print(usage("tooln1-fit", SUMMARY, [(f"--{name}={shown(default)}", text) for name, default, text in FLAGS]))
        raise SystemExit(0)
    prepare_environment()  # before jax is imported
    from absl import app, flags

    define_config_flag()
    define = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float}
    for name, default, text in FLAGS:
        if name not in flags.FLAGS:  # main may run twice in one process (tests)
            define[type(default)](name, default, text)
    app.run(_absl_main, argv=list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
