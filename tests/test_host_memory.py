"""keep_freed_memory: a large block freed by a worker thread is reused without faulting its pages in
again (the XLA:CPU temporaries of every update step); glibc's default unmaps and re-faults it."""
import subprocess
import sys

import pytest

from tooln1.platform.host_memory import jax_runs_on_cpu, keep_freed_memory

_REFAULTS = r"""
import ctypes, resource, sys, threading
if sys.argv[1] == "keep":
    from tooln1.platform.host_memory import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_void_p,)

def touch_and_free(n):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)

def work(out):  # a thread of its own, as XLA's workers: glibc gives it a secondary arena
    touch_and_free(200 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch_and_free(200 << 20)
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

out = []
thread = threading.Thread(target=work, args=(out,))
thread.start()
thread.join()
print(out[0])
"""


def _refaults(mode: str) -> int:
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, env=env, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_block_is_reused_without_page_faults():
    assert _refaults("default") > 40_000  # 200 MiB of 4 KiB pages faulted in again: what the setting removes
    assert _refaults("keep") < 100


def test_applies_only_when_jax_runs_on_cpu(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
    assert not jax_runs_on_cpu() and not keep_freed_memory()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert jax_runs_on_cpu()
    monkeypatch.setenv("TOOLN1_KEEP_FREED_MEMORY", "0")
    assert not keep_freed_memory()
