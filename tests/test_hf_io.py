"""HF checkpoint import/export: transformers reads our exports, round trips are exact, errors are clear."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import tooln1
from tooln1.checkpoints.hf_import import CheckpointError
from tooln1.checkpoints.tiny import make_tiny_checkpoint


def _params(model):
    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _ids(vocab):
    ids = np.random.RandomState(0).randint(0, vocab, (2, 9))
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    return ids, mask


def test_transformers_loads_export_with_equal_logits(tiny_checkpoint, tmp_path):
    model = tooln1.load_model(tiny_checkpoint)
    out = str(tmp_path / "export")
    model.save_pretrained(out)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = _ids(model.config.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0))).logits.numpy()
    assert np.abs(np.asarray(model(ids, mask)) - ref)[mask.astype(bool)].max() <= 1e-5
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template  # tokenizer travelled with it


def test_import_export_import_is_bit_exact(tiny_checkpoint, tmp_path):
    first = tooln1.load_model(tiny_checkpoint)
    first.save_pretrained(str(tmp_path))
    second = tooln1.load_model(str(tmp_path))
    a, b = _params(first), _params(second)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert second.config == first.config


def test_sharded_export_with_index_round_trips(tmp_path):
    src = make_tiny_checkpoint(str(tmp_path / "src"), arch="llama", shard_size="40KB", seed=1)
    assert os.path.isfile(os.path.join(src, "model.safetensors.index.json"))
    model = tooln1.load_model(src)
    out = str(tmp_path / "out")
    model.save_pretrained(out, max_shard_size="40KB")
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(os.path.isfile(os.path.join(out, s)) for s in shards)
    again = tooln1.load_model(out)
    a, b = _params(model), _params(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert sum(p.numel() for p in hf.parameters()) == sum(v.size for v in a.values())


def test_bfloat16_params_round_trip(tiny_checkpoint, tmp_path):
    model = tooln1.load_model(tiny_checkpoint, dtype="bfloat16")
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    model.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    again = tooln1.load_model(str(tmp_path), dtype="bfloat16")
    a, b = _params(model), _params(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_params_land_on_their_mesh_shardings(tiny_checkpoint):
    from tooln1.sharding import make_mesh

    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    model = tooln1.load_model(tiny_checkpoint, mesh=mesh)
    q = model.layers.attention.q_kernel[...]  # stacked over layers, which stay unsplit
    assert q.sharding.mesh == mesh and q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    # 2 KV heads cannot be split 4 ways: that dimension is replicated rather than failing.
    assert model.layers.attention.k_kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None, None)


# -- errors name the culprit ----------------------------------------------------------------------
@pytest.fixture
def broken(tiny_checkpoint, tmp_path):
    """A fresh copy of the tiny checkpoint that a test may damage."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    return path


def _rewrite_tensors(path, change):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_error_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found: .*nowhere"):
        tooln1.load_model(str(tmp_path / "nowhere"))


def test_error_no_config(broken):
    os.remove(broken / "config.json")
    with pytest.raises(CheckpointError, match="no config.json"):
        tooln1.load_model(str(broken))


def test_error_no_weights(broken):
    os.remove(broken / "model.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        tooln1.load_model(str(broken))


def test_error_unsupported_architecture(broken):
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unsupported architectures entry 'MistralForCausalLM'"):
        tooln1.load_model(str(broken))


def test_error_missing_tensor(broken):
    _rewrite_tensors(broken, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors model\.layers\.1\.mlp\.up_proj\.weight"):
        tooln1.load_model(str(broken))


def test_error_unexpected_tensor(broken):
    _rewrite_tensors(broken, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(4, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors model\.layers\.0\.self_attn\.o_proj\.bias"):
        tooln1.load_model(str(broken))


def test_error_wrong_shape(broken):
    def shrink(t):
        t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"][:, :-1].copy()

    _rewrite_tensors(broken, shrink)
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.mlp\.down_proj\.weight has shape"):
        tooln1.load_model(str(broken))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_error_unreadable_safetensors_names_the_file(broken, damage):
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not safetensors" * 100)
    with pytest.raises(CheckpointError, match=f"{weights}: not a readable safetensors file"):
        tooln1.load_model(str(broken))


def test_export_is_readable_by_others(tiny_checkpoint, tmp_path):
    """safetensors writes 0600; the export gets the mode open() gives (0644 under umask 022)."""
    old = os.umask(0o022)
    try:
        tooln1.load_model(tiny_checkpoint).save_pretrained(str(tmp_path / "out"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "out" / "model.safetensors").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "out" / "config.json").st_mode & 0o777 == 0o644


def test_error_index_names_missing_shard(tmp_path):
    src = make_tiny_checkpoint(str(tmp_path / "s"), shard_size="40KB")
    shard = sorted(f for f in os.listdir(src) if f.startswith("model-"))[0]
    os.remove(os.path.join(src, shard))
    with pytest.raises(CheckpointError, match=f"shard files that do not exist: {shard}"):
        tooln1.load_model(src)


def test_quickstart_checkpoint_needs_no_torch(tmp_path):
    """The quickstart runs after `pip install -e .` (no torch): its random checkpoint is made by tooln1."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; from tooln1.checkpoints.tiny import make_random_checkpoint; "
            f"make_random_checkpoint({str(tmp_path)!r}, seed=1)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    ours = tooln1.load_model(str(tmp_path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids, mask = _ids(ours.config.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0))).logits.numpy()
    assert np.abs(np.asarray(ours(ids, mask)) - ref)[mask.astype(bool)].max() <= 1e-5
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path)).eos_token == "<|im_end|>"


def test_convert_cli_round_trips_and_reports_bad_paths(tiny_checkpoint, tmp_path, capsys):
    from tooln1.checkpoints.hf_import import main

    main([tiny_checkpoint, str(tmp_path / "out")])
    assert "converted" in capsys.readouterr().out
    a, b = _params(tooln1.load_model(tiny_checkpoint)), _params(tooln1.load_model(str(tmp_path / "out")))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="tooln1-convert: checkpoint directory not found: .*missing"):
        main([str(tmp_path / "missing"), str(tmp_path / "out2")])
    (tmp_path / "out" / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(SystemExit, match=r"tooln1-convert: .*out/model.safetensors: not a readable safetensors file"):
        main([str(tmp_path / "out"), str(tmp_path / "out3")])
