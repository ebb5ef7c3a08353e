"""tools/bench/rollout.py refuses a system it cannot run before building anything."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TOOLN1_VLLM_PYTHON"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench", "rollout.py"), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_vllm_needs_its_environments_interpreter():
    run = _bench("--workload", "fixed-tiny", "--systems", "tooln1 engine,vLLM")
    assert run.returncode != 0
    assert "--vllm-python" in run.stderr and "vLLM's environment" in run.stderr
    run = _bench("--workload", "fixed-tiny", "--systems", "vLLM", "--vllm-python", "/nonexistent/python")
    assert run.returncode != 0 and "'/nonexistent/python'" in run.stderr


def test_unknown_system_is_named():
    run = _bench("--workload", "fixed-tiny", "--systems", "tooln1 engine,sglang")
    assert run.returncode != 0 and "['sglang']" in run.stderr


def test_vllm_side_gets_the_workload_as_token_ids_and_gets_its_column(tmp_path, monkeypatch):
    """A stand-in interpreter plays vLLM's side: it sees the prompts and EOS ids the other sides get,
    and its tok/s becomes the ÷ vLLM column."""
    import json

    sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))
    import rollout

    seen = tmp_path / "request.json"
    fake = tmp_path / "python"
    fake.write_text(f"""#!{sys.executable}
import json, shutil, sys
args = sys.argv[1:]
request, result = args[args.index("--request") + 1], args[args.index("--result") + 1]
shutil.copy(request, {str(seen)!r})
stats = dict(prefill_s=0.5, longest=31, cached_tokens=64)
json.dump(dict(system="vLLM", wall_s=2.0, tokens=100, tok_s=50.0, stats=stats, peak_rss_mb=1.0), open(result, "w"))
""")
    fake.chmod(0o755)
    monkeypatch.setattr(rollout.common, "CACHE", str(tmp_path / "cache"))
    ckpt, prompts, eos = rollout._setup("fixed-tiny", None)
    text = rollout.run_workload("fixed-tiny", ckpt, ["vLLM"], "float32", vllm_python=str(fake))
    request = json.loads(seen.read_text())
    assert (request["prompts"], request["eos"], request["group"], request["cap"]) == (prompts, eos, 5, 128)
    assert request["ignore_eos"] is True and request["dtype"] == "float32"
    assert "| vLLM | 100 | 2.0 | 50 | — | 1.00× |" in text
    assert ("vLLM: 0.5 s prefilling (the same prompts, stopped at each sample's first token; 64 prompt tokens "
            "from its prefix cache)") in text
    assert "the other 1.5 s of 2.0 s decoding to the longest response's 31 tokens (~50 ms a step)." in text


def test_phases_set_ours_beside_vllms():
    """Ours' prefill rounds over vLLM's prefill-only pass, and the rest of each side's time as decode."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))
    import rollout

    vllm = dict(wall_s=8.0, stats=dict(prefill_s=5.0, longest=61))
    ours = dict(stats=dict(device_s=12.0, prefill_rounds_s=8.0, decode_steps=68, prefill_chunks=7))
    text = rollout.phase_sentence(vllm, ours)
    assert "the other 3.0 s of 8.0 s decoding" in text and "(~50 ms a step)" in text
    assert "ours 8.0 s in prefill rounds (**1.60×** vLLM's) and 4.0 s decoding (**1.33×**, ~66 ms a step)." in text


def test_unknown_roofline_target_is_named_before_any_run():
    run = _bench("--workload", "fixed-tiny", "--systems", "tooln1 engine", "--roofline-target", "h999")
    assert run.returncode != 0 and "unknown target 'h999'" in run.stderr


def test_engine_is_measured_against_its_targets_roofline(tiny_checkpoint):
    """On a target's peaks, each part's bound is `rollout_work`'s and measured ÷ predicted its ratio."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))
    import rollout

    from tooln1.checkpoints.hf_import import load_model
    from tooln1.preflight import roofline
    from tooln1.preflight.targets import get_target

    model = load_model(tiny_checkpoint, dtype="float32")
    stats = dict(prefill_tokens=1000, prefill_chunks=2, prefill_context_tokens=400_000, decode_steps=300,
                 slot_steps=2400, decode_context_tokens=3_000_000, device_s=2.0, prefill_rounds_s=0.5)
    got = rollout._roofline(model, stats, "float32", "h100-80gb:1")
    h100 = get_target("h100-80gb:1")
    work = roofline.rollout_work(model.config, stats, roofline.Layout(), 4)
    decode = roofline.bound(work["decode"], h100.peak_flops, h100.hbm_bandwidth)
    assert got["parts"]["decode"]["seconds"] == decode["seconds"]
    assert got["parts"]["decode"]["ratio"] == 1.5 / decode["seconds"]
    assert got["parts"]["prefill"]["measured_seconds"] == 0.5
    assert rollout._roofline(model, stats, "float32", None) is None  # a CPU has no peaks to measure against
    sentence = rollout.roofline_sentence(got, 2.5)
    assert f"**{2.5 / got['seconds']:.1f}×** the roofline" in sentence and "h100-80gb:1" in sentence
