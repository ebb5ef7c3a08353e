"""tooln1-fit: per-device bytes of compiled programs, the misfit report, the command line.

On the CPU backend (8 forced host devices, conftest) always; for a TPU v5e 2x2 compile-only
topology when libtpu is installed (CI's second venv: JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1); for
an 8 x H100 node when the CUDA plugin is installed (``pip install "jax[cuda12]"``, 5.5 GB, not in
CI; run with JAX_PLATFORMS=cpu). The GPU target table and its text protos are checked everywhere.
"""
import importlib.util
import os

import numpy as np
import pytest

from tooln1.models import count_params
from tooln1.preflight import fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(prompt: int = 8, response: int = 8, **tiny):
    """The quickstart config at 8 prompts × G 2, log-probs in one micro-batch of 16 rows."""
    spec = importlib.util.spec_from_file_location("quickstart_cfg", os.path.join(ROOT, "configs", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.tiny.update({**dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128), **tiny})
    c.model.path = ""
    c.grpo.update(batch_size=8, group_size=2, max_response_tokens=response, share_prompt=False, prompt_bucket=0,
                  micro_batch_size=16, logprob_micro_batch_size=16, num_mini_batches=1)
    c.data.max_prompt_tokens = prompt
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c


def expected_argument_bytes(cfg, devices: int, rows: int, prompt: int, response: int) -> int:
    """Params split over fsdp (every matrix has an embed axis that the devices divide) except the
    replicated norms and q/k/v biases, plus the batch's int32 rows split over the devices."""
    config = fit.model_config(cfg)
    replicated = (2 * config.num_layers + 1) * config.hidden_size  # RMSNorm weights
    replicated += config.num_layers * (config.num_heads + 2 * config.num_kv_heads) * config.head_dim  # biases
    sharded = count_params(config) - replicated
    assert config.hidden_size % devices == 0
    params = (sharded // devices + replicated) * 4
    batch = rows // devices * 2 * (prompt + response) * 4  # prompt ids/mask + response ids/mask
    return params + batch


def test_validation_rollout_memory_is_bounded_by_eval_rollout_slots():
    """64 validation prompts over 8 batch shards (one a device): 1 slot a shard holds under a quarter
    of the KV pages a device holds with the default 8 slots a shard (its 8 prompts)."""
    outputs = {}
    for slots in (0, 1):
        cfg = tiny_cfg(prompt=64)
        cfg.eval.update(batch_size=64, max_new_tokens=32, rollout_slots=slots)
        (prog,) = fit.fit(cfg, "cpu:8", programs="validation rollout", say=lambda _: None)["programs"]
        outputs[slots] = prog["output_bytes"]  # the page pools (donated, given back) and the slots
    assert outputs[1] * 4 < outputs[0]


def test_logprobs_argument_bytes_are_the_sharded_params_on_cpu():
    cfg = tiny_cfg()
    report = fit.fit(cfg, "cpu:8", programs="logprobs", say=lambda _: None)
    (prog,) = report["programs"]
    assert report["target"]["num_devices"] == 8 and report["fits"]
    assert prog["name"].startswith("logprobs ref")  # num_mini_batches=1: on-policy, no old recompute
    p = prog["shapes"]["prompt_len"]
    assert p == 32  # the sampler's smallest default bucket
    assert prog["argument_bytes"] == expected_argument_bytes(cfg, 8, 16, p, 8)
    assert prog["output_bytes"] == 16 // 8 * 8 * 4  # [rows/dev, R] float32 log-probs
    assert prog["peak_bytes"] == (prog["argument_bytes"] + prog["output_bytes"] - prog["alias_bytes"]
                                  + prog["temp_bytes"])
    # the optimizer state (Adam mu + nu, sharded as the params) and the policy copy stay on the devices
    params = expected_argument_bytes(cfg, 8, 0, p, 8)
    assert prog["resident_bytes"] == 3 * params + 4  # + Adam's int32 step count


def lora_cfg(rank: int, quantize: str = "none"):
    """A data-parallel tiny config (every device holds the whole model, so bytes are whole counts)."""
    cfg = tiny_cfg(hidden=256, heads=4, kv_heads=2, intermediate=512)
    cfg.model.compute_dtype = "bfloat16"
    cfg.sft.enabled = False
    cfg.mesh.update(data=-1, fsdp=1)
    cfg.model.lora.update(rank=rank, quantize=quantize)
    return cfg


def projections(config) -> list[tuple[int, int]]:
    """(inputs, outputs) of q, k, v, o, gate, up, down: the kernels LoRA adapts and QLoRA quantizes."""
    d, f, q, kv = config.hidden_size, config.intermediate_size, config.num_heads, config.num_kv_heads
    h = config.head_dim
    return [(d, q * h), (d, kv * h), (d, kv * h), (q * h, d), (d, f), (d, f), (f, d)]


def test_lora_resident_bytes_are_the_bf16_base_and_fp32_adapters():
    """During a rollout the loop keeps the training model, Adam's moments and the reference; with
    adapters the base is bf16 (int8 or int4, packed, with float32 scales), the adapters and
    their moments float32, and the reference a bf16 copy of the adapters alone. Nothing is compiled."""
    from tooln1.preflight.targets import get_target, target_devices

    def resident(cfg) -> tuple[int, int]:
        mesh = fit.make_target_mesh(cfg, target_devices(get_target("cpu:8")))
        model = fit.abstract_model(fit.model_config(cfg), mesh, cfg.model.dtype)
        rollout, update = fit.plan(cfg, model, mesh, "rollout engine round,update")
        return rollout.resident_bytes, update.resident_bytes

    config = fit.model_config(lora_cfg(0))
    layers, p = config.num_layers, count_params(config)
    a = layers * 8 * sum(i + o for i, o in projections(config))  # A [in, r] and B [r, out], rank 8
    kernels = layers * sum(i * o for i, o in projections(config))
    # int8: a scale per output channel; int4: per output channel and group of 32 inputs
    scales = {"int8": layers * sum(o for _, o in projections(config)), "int4": kernels // 32}
    # full fine-tuning: float32 params, Adam's two moments and its int32 step, a bf16 reference
    assert resident(lora_cfg(0)) == (4 * p + 8 * p + 4 + 2 * p, 2 * p)
    assert resident(lora_cfg(8)) == (2 * p + 4 * a + 8 * a + 4 + 2 * a, 2 * a)
    for bits, kernel_bytes in (("int8", kernels), ("int4", kernels // 2)):
        base = 2 * (p - kernels) + kernel_bytes + 4 * scales[bits]
        assert resident(lora_cfg(8, bits)) == (base + 14 * a + 4, 2 * a), bits


def _lora_and_full_updates(target: str) -> tuple[dict, dict]:
    full, lora = (fit.fit(lora_cfg(rank), target, programs="update", say=lambda _: None)["programs"][0]
                  for rank in (0, 8))
    assert full["name"] == lora["name"]  # the same batch
    return full, lora


def test_lora_update_needs_far_less_memory_than_full_fine_tuning():
    """The update's arguments: float32 params and both Adam moments for full fine-tuning; the bf16
    base beside float32 adapters and their moments with LoRA, and no base-sized gradient."""
    full, lora = _lora_and_full_updates("cpu:8")
    config = fit.model_config(lora_cfg(0))
    p = count_params(config)
    a = config.num_layers * 8 * sum(i + o for i, o in projections(config))
    assert lora["argument_bytes"] - full["argument_bytes"] == (2 * p + 12 * a) - 12 * p
    assert lora["alias_bytes"] == 12 * a + 4  # the train state given back in place: adapters and moments
    assert lora["temp_bytes"] < full["temp_bytes"] - 4 * p  # full fine-tuning's float32 gradient
    assert lora["peak_bytes"] < 0.4 * full["peak_bytes"]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_lora_update_on_a_tpu_v5e_2x2_needs_far_less_memory_than_full_fine_tuning():
    """As on the CPU, for XLA:TPU (which pads to tiles and reports its own peak)."""
    full, lora = _lora_and_full_updates("tpu-v5e-4")
    assert lora["argument_bytes"] < 0.25 * full["argument_bytes"]
    assert fit.total_bytes(lora) - lora["resident_bytes"] < 0.4 * (fit.total_bytes(full) - full["resident_bytes"])


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_v5e_8_target_is_one_host_of_eight_chips():
    from tooln1.preflight.targets import get_target, target_devices

    devices = target_devices(get_target("tpu-v5e-8"))
    assert len(devices) == 8 and {d.process_index for d in devices} == {0}
    assert {tuple(d.coords) for d in devices} == {(x, y, 0) for x in range(2) for y in range(4)}


def test_too_big_is_reported_with_its_largest_buffer():
    cfg = tiny_cfg(prompt=1024, response=8)
    cfg.model.attention = "dense"  # the reference's scores [rows, kv, groups, T, T] at T = 1032 dominate
    report = fit.fit(cfg, "cpu:8", programs="logprobs", hbm_bytes=8 << 20, say=lambda _: None)
    (prog,) = report["programs"]
    assert not report["fits"] and not prog["fits"]
    assert prog["peak_bytes"] > 8 << 20
    top = prog["largest_buffers"][0]
    scores = 2 * 2 * 2 * 1032 * 1032 * 4  # rows per device × kv heads × groups × T × T, float32
    assert top["bytes"] == scores == max(b["bytes"] for b in prog["largest_buffers"])
    assert top["shape"].startswith("f32[") and "1032" in top["shape"]
    dims = [int(d) for d in top["shape"][4:-1].split(",")]
    assert 4 * int(np.prod(dims)) == top["bytes"] <= prog["temp_bytes"]


def test_unknown_target_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        fit.main(["tooln1-fit", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--target", "tpu-v9"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown target 'tpu-v9'" in err[0] and "tpu-v5p-128" in err[0] and "cpu:N" in err[0]
    assert all(name in err[0] for name in ("h100-80gb:8", "h200:8", "a100-80gb:1"))


def test_gpu_targets_are_the_cuda_totals_at_jax_memory_fraction(monkeypatch):
    from tooln1.preflight.targets import GPUS, GiB, get_target

    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    h100, h200, a100 = (get_target(f"{gpu}:8") for gpu in ("h100-80gb", "h200", "a100-80gb"))
    assert (h100.platform, h100.num_devices, h100.device_kind) == ("cuda", 8, "NVIDIA H100 80GB HBM3")
    assert get_target("h100-80gb:1").num_devices == 1 and get_target("h200:1").device_kind == "NVIDIA H200"
    # what CUDA reports: the HBM (80 GiB; H200: 140.4 GiB) less what the driver keeps
    assert 79 * GiB < GPUS["h100-80gb"].memory_bytes < 80 * GiB and 79 * GiB < GPUS["a100-80gb"].memory_bytes < 80 * GiB
    assert 139 * GiB < GPUS["h200"].memory_bytes < 140.4 * GiB  # nvidia-smi: 143,771 MiB
    assert h100.hbm_bytes == int(0.75 * GPUS["h100-80gb"].memory_bytes)  # JAX's default preallocation
    assert h200.hbm_bytes > 1.7 * a100.hbm_bytes
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".95")
    assert get_target("h100-80gb:8").hbm_bytes == int(0.95 * GPUS["h100-80gb"].memory_bytes)


def test_gpu_target_config_text_proto():
    from tooln1.preflight.targets import GPUS, gpu_target_config

    h200 = gpu_target_config(GPUS["h200"], (9, 8, 0))
    assert h200.count("{") == h200.count("}") == 3  # gpu_device_info, its compute capability, dnn_version_info
    lines = {line.strip() for line in h200.splitlines()}
    for field in (f"device_memory_size: {GPUS['h200'].memory_bytes}", "core_count: 132",
                  "memory_bandwidth: 4800000000000", "major: 9", "minor: 8",
                  'device_description_str: "NVIDIA H200"', 'platform_name: "CUDA"'):
        assert field in lines, field
    a100 = gpu_target_config(GPUS["a100-80gb"])
    assert "core_count: 108" in a100 and "major: 8" in a100 and "fpus_per_core: 64" in a100


def test_gpu_target_without_the_cuda_plugin_is_one_line(capsys, monkeypatch):
    import jax

    from tooln1.preflight import targets

    monkeypatch.setattr(targets, "cuda_plugin_installed", lambda: False)
    with pytest.raises(SystemExit) as e:
        fit.main(["tooln1-fit", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--target", "h200:8"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "h200:8" in err[0] and f"pip install 'jax[cuda12]=={jax.__version__}'" in err[0]


def test_mesh_presets_name_known_targets():
    from tooln1.config.presets import MESHES
    from tooln1.preflight.targets import get_target

    for name, (_, devices, target) in MESHES.items():
        t = get_target(target)
        assert not devices or t.num_devices == devices, name


def _why_no_gpu_compile() -> str:
    """Why the compile-only GPU test cannot run in this environment ("" when it can)."""
    from tooln1.preflight.targets import cuda_plugin_installed

    if not cuda_plugin_installed():
        return "CUDA plugin not installed (pip install 'jax[cuda12]', 5.5 GB; compiles without a GPU)"
    if os.environ.get("JAX_PLATFORMS") != "cpu":
        return "needs JAX_PLATFORMS=cpu: without a GPU the CUDA plugin fails its check and gives no devices"
    return ""


@pytest.mark.skipif(bool(_why_no_gpu_compile()), reason=_why_no_gpu_compile() or "runs")
def test_logprobs_and_update_bytes_on_an_8_gpu_h100_node():
    cfg = tiny_cfg(prompt=1024)  # T > 512: the cuDNN attention kernel (bf16 only)
    cfg.model.compute_dtype = "bfloat16"
    cfg.sft.enabled = False
    report = fit.fit(cfg, "h100-80gb:8", programs="logprobs,update", say=lambda _: None)
    logprobs, update = report["programs"]
    target = report["target"]
    assert (target["platform"], target["num_devices"], target["device_kind"]) == ("cuda", 8, "NVIDIA H100 80GB HBM3")
    assert target["hbm_bytes"] < target["device_memory_bytes"] and report["fits"]
    # XLA:GPU stores arrays unpadded: the params split over the 8 GPUs, the batch's rows too
    assert logprobs["argument_bytes"] == expected_argument_bytes(cfg, 8, 16, 1024, 8)
    assert logprobs["output_bytes"] == 16 // 8 * 8 * 4
    params = expected_argument_bytes(cfg, 8, 0, 1024, 8)
    # the reference is held in the compute dtype (bfloat16): half the float32 params
    assert logprobs["resident_bytes"] == 3 * params + 4 and update["resident_bytes"] == params // 2
    # the update takes the train state (params + Adam mu, nu + step) and gives it back in place
    assert update["argument_bytes"] >= 3 * params and update["alias_bytes"] >= 3 * params
    for prog in (logprobs, update):
        assert prog["xla_peak_bytes"] > 0 and prog["temp_bytes"] > 0
        assert prog["peak_bytes"] == (prog["argument_bytes"] + prog["output_bytes"] - prog["alias_bytes"]
                                      + prog["temp_bytes"])


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_logprobs_bytes_on_a_tpu_v5e_2x2_topology():
    # dims that fill TPU (8, 128) tiles, so the params are stored unpadded (the vocabulary aside)
    cfg = tiny_cfg(hidden=1024, heads=8, kv_heads=8, intermediate=512)
    report = fit.fit(cfg, "tpu-v5e-4", programs="logprobs", say=lambda _: None)
    (prog,) = report["programs"]
    assert report["target"] == {"name": "tpu-v5e-4", "platform": "tpu", "device_kind": "TPU v5 lite",
                                "num_devices": 4, "hbm_bytes": 16 << 30}
    # TPU layouts pad trailing dims to (8, 128) tiles: the 2,995-row embedding and the tiny batch a little
    expected = expected_argument_bytes(cfg, 4, 16, 32, 8)
    assert expected <= prog["argument_bytes"] <= 1.01 * expected
    # XLA:TPU reports temp 0 for this while loop; its own peak holds the scratch (a gathered weight)
    assert prog["fits"] and prog["xla_peak_bytes"] > prog["argument_bytes"] + prog["output_bytes"]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_compiler_refusal_is_reported_as_not_fitting():
    # the dense reference's scores [16, 2, 2, T, T] float32 at T = 16,392: 64 GiB globally, 16 GiB a chip
    # > v5e's HBM (the default attention is linear in T and fits)
    cfg = tiny_cfg(prompt=16384, response=8)
    cfg.model.attention = "dense"
    report = fit.fit(cfg, "tpu-v5e-4", programs="logprobs", say=lambda _: None)
    (prog,) = report["programs"]
    assert not report["fits"] and not prog["fits"]
    assert "RESOURCE_EXHAUSTED" in prog["compile_error"] and prog["peak_bytes"] > 15 << 30
    top = prog["largest_buffers"][0]
    assert top["bytes"] == 16 * 2 * 2 * 16392 * 16392 * 4 and top["scope"] == "global"


def _tpu_training_memory(length: int) -> tuple[int, dict]:
    """Per-chip temp bytes of a forward + backward at Qwen2.5-0.5B widths (2 layers, remat, fp32 params,
    bf16 compute) on a TPU v5e 2x2, one row of ``length`` tokens a chip in the GRPO update's packed layout
    (a prompt of half the row, the replies after it), gradients sharded as the params; and the bytes of the
    largest buffer of each JAX op that the compiled program holds.

    The loss is on the hidden states and the vocabulary is cut to 1,024 rows: neither enters attention,
    and Qwen's 151,936-row embedding gradient would add a constant that hides what grows. XLA:TPU's
    memory-space assignment is off, so every buffer is in temp: with it on, the 2,048-token program
    keeps its [T, 4864] MLP activations in VMEM, which temp does not count (docs/scaling.md)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from tooln1.models import preset
    from tooln1.preflight.targets import get_target, target_devices
    from tooln1.sharding import make_mesh

    mesh = make_mesh({"fsdp": -1}, devices=target_devices(get_target("tpu-v5e-4")))
    config = preset("qwen2.5-0.5b", num_layers=2, vocab_size=1024, remat=True, param_dtype="float32",
                    dtype="bfloat16")
    graphdef, params = nnx.split(fit.abstract_model(config, mesh))
    prompt = length // 2

    def loss(params, ids, segments):
        hidden = nnx.merge(graphdef, params).hidden_states(ids, shared_prefix=prompt, segments=segments)
        return jnp.mean(hidden.astype(jnp.float32) ** 2)

    rows = mesh.devices.size
    step = jax.jit(jax.grad(loss), out_shardings=jax.tree.map(lambda x: x.sharding, params))
    lowered = step.lower(params, fit.batch_struct(mesh, rows, length), fit.batch_struct(mesh, rows, length - prompt))
    compiled = lowered.compile(compiler_options={"xla_msa_enable": "false"})
    largest: dict = {}
    for buf in fit.largest_buffers(compiled.as_text(), top=1 << 30):
        key = (buf["source"] or buf["op"], buf["shape"].split("[")[0])
        largest[key] = max(largest.get(key, 0), buf["bytes"])
    return compiled.memory_analysis().temp_size_in_bytes, largest


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_training_memory_grows_linearly_with_length():
    """From 2,048 to 8,192 tokens a row the training forward + backward (splash attention over the prompt,
    blockwise over the replies' parts) needs at most 5x the per-chip temp, and no buffer of it grows more
    than 4x: a [T, T] array of any dtype grows 16x. The dense reference fails both, and so does the
    blockwise path without its optimization barrier (docs/scaling.md)."""
    (short, short_buffers), (long, long_buffers) = (_tpu_training_memory(t) for t in (2048, 8192))
    assert long <= 5 * short, (short, long)
    grown = {key: (short_buffers[key], size) for key, size in long_buffers.items()
             if key in short_buffers and size >= 1 << 20 and size > 4 * short_buffers[key]}
    assert not grown, grown


def test_shapes_come_from_config_json_without_weights(tmp_path):
    import json

    from tooln1.models import preset

    want = preset("qwen2.5-1.5b").replace(num_layers=3)
    (tmp_path / "config.json").write_text(json.dumps(want.to_hf()))  # no weight files at all
    cfg = tiny_cfg()
    cfg.model.update(path=str(tmp_path), preset="qwen2.5-7b", dtype="float32", compute_dtype="bfloat16")
    cfg.model.tiny.enabled = False
    got = fit.model_config(cfg)
    assert got == want.replace(dtype="bfloat16", remat=bool(cfg.model.remat))
    cfg.model.path = str(tmp_path / "missing")
    assert fit.model_config(cfg, layers=2) == preset("qwen2.5-7b", dtype="bfloat16", num_layers=2,
                                                     remat=bool(cfg.model.remat))


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_rollout_programs_run_the_kernel_on_pools_in_place():
    """On a TPU v5e 2x2 (4 batch shards, one core a chip) with a head size of 128 the decode round and the
    prefill both run JAX's ragged paged attention kernel on the ragged pool, the prefill no other attention
    and no loop but the layers', and neither program copies the pool: a [T, KV, D] scatter made XLA:TPU
    keep the pools in another layout and copy them around the decode loop, a layer sliced out of the
    stacked pools for the kernel was a copy at every step, and admissions' page copies as one gather
    and scatter relaid the ragged pool out around every round."""
    import re

    def kernels(text):  # the Pallas kernels a program runs, by name: paged attention's, splash's
        return {re.sub(r"\.\d+$", "", k) for k in re.findall(r"%(\S+) = [^\n]*custom_call_target=\"tpu_custom_call\"",
                                                         text)}

    from tooln1.models import ModelConfig
    from tooln1.preflight.targets import get_target, target_devices
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig
    from tooln1.sharding import make_mesh

    mesh = make_mesh({"fsdp": -1}, devices=target_devices(get_target("tpu-v5e-4")))
    config = ModelConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=128, dtype="bfloat16")
    engine = Engine(fit.abstract_model(config, mesh), EngineConfig(num_slots=8))
    assert engine.layout.kv_pool == "ragged"
    sampling = SamplingConfig(num_samples=2, max_new_tokens=512, eos_ids=(0,))
    shape = engine.shape(sampling, 64, 1024)
    pool_bytes = 2 * 2 * shape.num_pages * shape.page_size * 128 * 2  # one shard's keys and values
    for program in ("round", "prefill"):
        compiled = engine.lower(sampling, 64, 1024, program=program).compile()
        text = compiled.as_text()
        assert kernels(text) == {"ragged_paged_attention_kernel"}, program
        pool_copies = re.findall(rf"= bf16\[1,2,{shape.num_pages},16,4,128\]\S* copy\(", text)
        assert not pool_copies and compiled.memory_analysis().temp_size_in_bytes < pool_bytes / 8, program
        if program == "prefill":  # the layers' loop only: no loop over blocks, no gathered context
            assert len(re.findall(r" while\(", text)) == 1
    # a head size of 64 (Qwen2.5-0.5B) does not lower in the kernel: such a model decodes with the pure-JAX
    # attention, from pools of 128-lane rows, also in place (64-wide pools were copied to and from another
    # layout around every decode loop and prefill: Qwen2.5-0.5B on tpu-v5e-64, 7.19 and 9.58 GiB)
    # (64 slots, 1,024 prompts x G 5: with 8 slots and 64 prompts XLA kept even the 64-wide pools in place)
    small = Engine(fit.abstract_model(config.replace(head_dim=64), mesh), EngineConfig(num_slots=64))
    groups = SamplingConfig(num_samples=5, max_new_tokens=512, eos_ids=(0,))
    shape = small.shape(groups, 1024 * 5, 1024)
    pool_bytes = 2 * 2 * shape.num_pages * shape.page_size * 64 * 2
    for program in ("round", "prefill"):
        compiled = small.lower(groups, 1024 * 5, 1024, program=program).compile()
        assert all(k.startswith("splash") for k in kernels(compiled.as_text())), program
        assert compiled.memory_analysis().temp_size_in_bytes < pool_bytes, program  # no pool copied
    assert small.layout.kv_pool == "split"


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_decode_round_neither_relays_out_projections_nor_gathers_the_head():
    """On a TPU v5e 2x2 the decode round reads the decoding copy's q/k/v kernels in place (stored
    [layers, heads, embed, D]: XLA:TPU copied [layers, embed, heads, D] stacks into that layout at every
    round, Qwen2.5-14B 3.3 GiB a chip), and with tensor parallelism it gathers the logits, not the
    vocab-sharded head (Qwen2.5-7B on tpu-v4-32-tp4: 1 GiB at every step)."""
    import re

    from tooln1.models import ModelConfig
    from tooln1.preflight.targets import get_target, target_devices
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig
    from tooln1.sharding import make_mesh

    config = ModelConfig(vocab_size=8192, hidden_size=1024, intermediate_size=2048, num_layers=2, num_heads=8,
                         num_kv_heads=2, head_dim=128, dtype="bfloat16")
    sampling = SamplingConfig(num_samples=2, max_new_tokens=512, eos_ids=(0,))
    for axes in ({"fsdp": -1}, {"fsdp": 2, "tensor": 2}):
        mesh = make_mesh(axes, devices=target_devices(get_target("tpu-v5e-4")))
        engine = Engine(fit.abstract_model(config, mesh), EngineConfig(num_slots=8))
        assert engine.weights["layers"]["attention"]["q_kernel"].shape == (2, 8, 1024, 128)
        text = engine.lower(sampling, 64, 1024).compile().as_text()
        kernel_copies = re.findall(r"= (bf16\[2,\d+,\d+,128\])\S* copy\(", text)
        gathered = [tuple(map(int, dims.split(","))) for dims in re.findall(r"= \w+\[([\d,]+)\]\S* all-gather", text)]
        assert not kernel_copies, (axes, kernel_copies)
        assert not [s for s in gathered if 8192 in s and 1024 in s], (axes, gathered)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_kernel_splits_decode_attention_over_a_megacore_chips_two_cores(monkeypatch):
    """A v4 (or v5p) device is two TensorCores; JAX's paged-attention kernel runs on one of them unless told
    to split (by kv head, else by sequence). A v5e device is one core, where a split may hang the kernel: it
    decodes with the ragged kernel (`tooln1.models.ragged_attention`), which runs on one core."""
    from tooln1.models import ModelConfig
    from tooln1.models import paged_attention as pa
    from tooln1.preflight.targets import get_target, target_devices
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig
    from tooln1.sharding import make_mesh

    modes = []
    kernel = pa._tpu_kernel()
    monkeypatch.setattr(pa, "_tpu_kernel",
                        lambda: lambda *a, **kw: modes.append(kw["megacore_mode"]) or kernel(*a, **kw))
    config = ModelConfig(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_layers=2, num_heads=8,
                         num_kv_heads=4, head_dim=128, dtype="bfloat16")
    sampling = SamplingConfig(num_samples=2, max_new_tokens=256, eos_ids=(0,))
    cases = [("tpu-v4-32", {"fsdp": -1}, "kv_head"), ("tpu-v4-32", {"fsdp": 4, "tensor": 4}, "batch"),
             ("tpu-v5e-4", {"fsdp": -1}, None)]
    for target, axes, want in cases:
        mesh = make_mesh(axes, devices=target_devices(get_target(target)))
        modes.clear()
        engine = Engine(fit.abstract_model(config, mesh), EngineConfig(num_slots=8))
        engine.lower(sampling, 32, 512).compile()
        assert engine.layout.kv_pool == ("split" if want else "ragged"), target
        assert (modes and set(modes) == {want}) if want else not modes, (target, axes, modes)
    assert pa.megacore_mode(2, 1, 3) is None and pa.megacore_mode(1, 4, 8) is None
