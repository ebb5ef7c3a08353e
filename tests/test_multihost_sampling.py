"""Multi-process sampling: two processes with 4 CPU devices each, each passing its own prompts, get the
rows that one process with 8 devices gets for the whole batch (subprocesses, because XLA flags and
``jax.distributed`` must be set up before JAX starts)."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from tooln1.checkpoints.hf_import import load_model
from tooln1.checkpoints.tiny import make_tiny_checkpoint, special_token_ids
from tooln1.rollout.sampling import SamplingConfig, sample
from tooln1.sharding import make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = {"data": 2, "fsdp": 2, "tensor": 2}
LENGTHS = [5, 17, 9, 1, 3, 12, 7, 2]
# Process 0 passes prompts 0-3 (longest 17 -> bucket 32), process 1 prompts 4-6 (longest 12 -> bucket
# 16, and one row short): they must agree on the shapes, and process 1's padding row is global row 7.
SHARES = [(0, 4), (4, 7)]
SEED = 11

SCRIPT = r"""
import json, sys
import jax
process_id, port, args = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)
import numpy as np
from tooln1.checkpoints.hf_import import load_model
from tooln1.rollout.sampling import SamplingConfig, sample
from tooln1.sharding import make_mesh

assert jax.process_count() == 2 and jax.local_device_count() == 4 and jax.device_count() == 8, jax.devices()
cfg = SamplingConfig(**args["cfg"])
model = load_model(args["path"], dtype="float32", mesh=make_mesh(args["mesh"]))
ids, mask = np.asarray(args["ids"], np.int32), np.asarray(args["mask"], np.int32)
width = int(mask.sum(-1).max())  # this process's own (narrower) padding
out = sample(model, ids[:, -width:], mask[:, -width:], cfg, args["seed"])
assert not out.tokens.is_fully_addressable and out.tokens.shape[0] == 8 * cfg.num_samples, out.tokens.shape
local = out.local()
result = {k: np.asarray(v).tolist() for k, v in local._asdict().items() if k != "num_local"}
# the trainer's update batch: both processes must agree on the trimmed and packed lengths
from tooln1.training.batch import update_batch
lengths = np.asarray(args["update_lengths"][process_id])
fake = local._replace(mask=(np.arange(64)[None] < lengths[:, None]).astype(np.int32),
                      tokens=np.zeros((len(lengths), 64), np.int32))
host, packed = update_batch(fake, np.zeros(len(lengths)), 2)
result["update_lengths"] = [host["response_ids"].shape[1], packed]
print("RESULT" + json.dumps(result))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _prompts(pad: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    width = max(LENGTHS)
    ids = np.full((len(LENGTHS), width), pad, np.int32)
    mask = np.zeros((len(LENGTHS), width), np.int32)
    for i, n in enumerate(LENGTHS):
        ids[i, width - n:] = rng.randint(0, 2990, n)
        mask[i, width - n:] = 1
    return ids, mask


def _run_processes(args: dict) -> list[dict]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=4"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    port = str(_free_port())
    procs = []
    for i, (lo, hi) in enumerate(SHARES):
        share = dict(args, ids=args["ids"][lo:hi], mask=args["mask"][lo:hi])
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, str(i), port, json.dumps(share)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    results = []
    for i, (p, (stdout, stderr)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{stderr[-4000:]}"
        line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT"))
        results.append({k: np.asarray(v) for k, v in json.loads(line[6:]).items()})
    return results


def test_process_local_prompts_give_the_single_process_rows(tmp_path):
    assert jax.device_count() == 8, jax.devices()
    special = special_token_ids()
    pad = special["<|endoftext|>"]
    path = make_tiny_checkpoint(str(tmp_path / "tiny"), nonzero_biases=True, init_std=0.3, seed=2)
    cfg = dict(num_samples=2, max_new_tokens=10, temperature=0.8, top_k=40, eos_ids=[special["<|im_end|>"], pad],
               pad_id=pad, prompt_buckets=[8, 16, 32])
    ids, mask = _prompts(pad)
    # process 0 alone would train on 32 columns packed to 24 (groups of 23 and 18 tokens), process 1 on
    # 64 packed to 48 (a 42-token group): both must use 64 and 48
    update_lengths = [[3, 20, 17, 1], [40, 2, 1, 1]]
    results = _run_processes(dict(path=path, mesh=MESH, cfg=cfg, seed=SEED, ids=ids.tolist(), mask=mask.tolist(),
                                  update_lengths=update_lengths))
    assert [r.pop("update_lengths").tolist() for r in results] == [[64, 48], [64, 48]]

    model = load_model(path, dtype="float32", mesh=make_mesh(MESH))
    out = sample(model, ids, mask, SamplingConfig(**cfg), SEED)
    ref = out.local()
    np.testing.assert_array_equal(ref.tokens, np.asarray(out.tokens))  # single-process: the whole output
    g = cfg["num_samples"]
    # The processes' prompts sample differently, so a mix-up of rows would show.
    assert not np.array_equal(ref.tokens[:3 * g], ref.tokens[4 * g:7 * g])
    for i, ((lo, hi), res) in enumerate(zip(SHARES, results)):
        rows = slice(lo * g, hi * g)
        assert res["tokens"].shape == (hi * g - lo * g, cfg["max_new_tokens"]), f"process {i}"
        for field in ("tokens", "mask", "prompt_ids", "prompt_mask"):
            np.testing.assert_array_equal(res[field], getattr(ref, field)[rows], err_msg=f"process {i} {field}")
        np.testing.assert_allclose(res["logprobs"], ref.logprobs[rows], atol=1e-4, rtol=0, err_msg=f"process {i}")
