"""Sampling on a mesh gives the single-device result (8 forced CPU devices, in a subprocess because
XLA_FLAGS must be set before JAX initialises)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest  # noqa: F401

from tooln1.testing import make_tiny_checkpoint, special_token_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import numpy as np
import jax
assert jax.device_count() == 8, jax.devices()
from tooln1.hf_io import load_model
from tooln1.sampling import SamplingConfig, sample
from tooln1.sharding import make_mesh

path, eos, pad = sys.argv[1], tuple(json.loads(sys.argv[2])), int(sys.argv[3])
rng = np.random.RandomState(0)
lengths = [5, 17, 9, 1]
ids = np.full((4, 17), pad, np.int32); mask = np.zeros((4, 17), np.int32)
for i, n in enumerate(lengths):
    ids[i, 17 - n:] = rng.randint(0, 2990, n); mask[i, 17 - n:] = 1
cfg = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=0.7, top_k=20, top_p=0.9, eos_ids=eos, pad_id=pad)
results = {}
for name, shape in [("single", None), ("fsdp2_tensor4", {"fsdp": 2, "tensor": 4}),
                    ("data2_fsdp2_tensor2", {"data": 2, "fsdp": 2, "tensor": 2})]:
    mesh = None if shape is None else make_mesh(shape)
    model = load_model(path, dtype="float32", mesh=mesh)
    out = sample(model, ids, mask, cfg, 3)
    if mesh is not None:
        assert len(out.tokens.sharding.device_set) > 1 or out.tokens.shape[0] < 8
        q = model.layers[0].attention.q_kernel.value
        assert len(q.sharding.device_set) == 8, q.sharding
    results[name] = dict(tokens=np.asarray(out.tokens).tolist(), logprobs=np.asarray(out.logprobs).tolist(),
                         mask=np.asarray(out.mask).tolist())
print("RESULT" + json.dumps(results))
"""


def test_sharded_equals_single_device(tmp_path):
    ids = special_token_ids()
    path = make_tiny_checkpoint(str(tmp_path / "tiny"), nonzero_biases=True, init_std=0.3, seed=2)
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, path, json.dumps(eos), str(ids["<|endoftext|>"])],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    res = {k: {f: np.asarray(v) for f, v in d.items()} for k, d in json.loads(line[6:]).items()}
    single = res.pop("single")
    assert single["tokens"].shape == (8, 12)
    for name, r in res.items():
        np.testing.assert_array_equal(r["tokens"], single["tokens"], err_msg=name)
        np.testing.assert_array_equal(r["mask"], single["mask"], err_msg=name)
        np.testing.assert_allclose(r["logprobs"], single["logprobs"], atol=1e-4, rtol=0, err_msg=name)
