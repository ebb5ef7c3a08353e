"""tools/gpu_speed.py, the one script a GPU session runs for the speed figures, at the tiny shape on a CPU:
each figure is the arithmetic its docstring states over what the engine measured."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu_speed.py")


def test_unknown_part_is_named():
    run = subprocess.run([sys.executable, SCRIPT, "--parts", "decode,warp"], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "['warp']" in run.stderr


def test_engine_parts_at_the_tiny_shape(tmp_path):
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, SCRIPT, "--cpu", "--parts", "decode,prefill,memory", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    (shape,) = json.loads(out.read_text())["shapes"]
    assert shape["target"] == "h100-80gb:1" and "error" not in shape
    assert [row["slots"] for row in shape["decode"]] == [8, 4]  # widest first: it sets the allocator's peak
    for row in shape["decode"]:
        assert row["decode_steps"] == 7  # 8 new tokens, the first decoded in the round that prefilled
        assert row["fraction_of_roofline"] == pytest.approx(row["roofline_step_ms"] / row["step_ms"])
        assert row["tokens_per_s"] == pytest.approx(row["slots"] / row["step_ms"] * 1e3)
    prefill = shape["prefill"]
    assert (prefill["chunks"], prefill["tokens"]) == (2, 128)  # two 65-token prompts, 64 prefilled each
    assert prefill["mfu"] == pytest.approx(prefill["flops"] / prefill["seconds"] / 989e12)
    memory = shape["memory"]
    assert memory["predicted_bytes"] == memory["compiled_peak_bytes"] + memory["resident_bytes"] > 0
    assert memory["measured_peak_bytes"] is None  # a CPU has no allocator statistics


def test_a_shape_cut_at_its_limit_is_reported_with_what_it_finished(tmp_path):
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, SCRIPT, "--cpu", "--parts", "decode", "--timeout", "1", "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    (shape,) = json.loads(out.read_text())["shapes"]
    assert shape == {"shape": "tiny", "error": "timed out after 1 s"}  # killed before its first run ended
