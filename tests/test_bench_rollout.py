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
