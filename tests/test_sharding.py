"""Meshes from config, the rules table, and sharded == unsharded logits on 8 CPU devices."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import tooln1
from tooln1.sharding import batch_axes, batch_shards, logical_to_spec, make_mesh


def test_mesh_shapes_and_errors():
    assert jax.device_count() == 8, "conftest sets 8 host CPU devices"
    assert dict(make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(make_mesh({"data": 2, "fsdp": -1}).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match=r"needs 6 devices, but 8 are available"):
        make_mesh({"fsdp": 3, "tensor": 2})
    with pytest.raises(ValueError, match=r"unknown mesh axes \['model'\]"):
        make_mesh({"model": 8})


def test_batch_axes_are_the_splitting_data_and_fsdp_axes():
    assert batch_axes(None) == () and batch_shards(None) == 1
    assert batch_axes(make_mesh({"data": 2, "fsdp": 4})) == ("data", "fsdp")
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    assert batch_axes(mesh) == ("fsdp",) and batch_shards(mesh) == 2
    assert batch_axes(make_mesh({"tensor": 8})) == ()


def test_rules_replicate_what_does_not_divide():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    assert logical_to_spec(("embed", "heads", "head_dim"), (64, 8, 16), mesh) == P("fsdp", "tensor", None)
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == P("fsdp", None, None)
    assert logical_to_spec(("batch", "length"), (6, 5), mesh) == P("fsdp", None)  # 6 rows: fsdp only
    with pytest.raises(KeyError, match="no rule"):
        logical_to_spec(("nonsense",), (4,), mesh)


@pytest.mark.parametrize("shape", [{"fsdp": 8}, {"fsdp": 2, "tensor": 4}], ids=["1x8", "2x4"])
def test_sharded_logits_equal_single_device(tiny_checkpoint, shape):
    ids = np.random.RandomState(0).randint(0, 200, (8, 12))
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    single = np.asarray(tooln1.load_model(tiny_checkpoint)(ids, mask))
    mesh = make_mesh(shape)
    model = tooln1.load_model(tiny_checkpoint, mesh=mesh)
    batch = jax.device_put(ids, jax.sharding.NamedSharding(mesh, P(("data", "fsdp"))))
    sharded = model(batch, mask)
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(sharded), single, atol=1e-5)
