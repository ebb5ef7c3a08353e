"""tooln1.checkpoints.train_state: sharded round trip of a TrainState, keep-N, metadata and RNG."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec


def _state(mesh, scale=1.0):
    import optax

    from tooln1.training.updater import TrainState

    sh = NamedSharding(mesh, PartitionSpec("fsdp"))
    params = {"w": jax.device_put(jnp.arange(16, dtype=jnp.float32) * scale, sh),
              "b": {"x": jnp.ones((3,), jnp.bfloat16) * scale}}
    opt = optax.adamw(1e-3).init(params)
    return TrainState(params=params, opt_state=opt)


def test_round_trip_keep_and_meta(tmp_path):
    from tooln1.checkpoints.train_state import Checkpointer, rng_from_json, rng_to_json
    from tooln1.sharding import make_mesh

    mesh = make_mesh({"fsdp": -1})
    ck = Checkpointer(str(tmp_path / "ck"), keep=2, async_save=True)
    assert ck.latest_step() is None and ck.restore(_state(mesh)) is None
    key = jax.random.fold_in(jax.random.key(7), 3)
    for step in (1, 2, 3):
        ck.save(step, _state(mesh, float(step)), {"data": {"epoch": 0, "batch": step}, "rng": rng_to_json(key)})
    ck.close()

    ck = Checkpointer(str(tmp_path / "ck"), keep=2)
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
    like = _state(mesh, 0.0)
    state, meta = ck.restore(like)
    assert meta["step"] == 3 and meta["data"] == {"epoch": 0, "batch": 3}
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.arange(16) * 3.0)
    assert state.params["w"].sharding == like.params["w"].sharding
    assert state.params["b"]["x"].dtype == jnp.bfloat16
    assert jax.tree.structure(state) == jax.tree.structure(like)
    again = rng_from_json(meta["rng"], jax.random.key(0))
    assert jnp.array_equal(jax.random.key_data(again), jax.random.key_data(key))
    assert ck.restore_meta(2)["step"] == 2
    ck.close()


def test_restore_into_wrong_shape_names_the_array(tmp_path):
    from tooln1.checkpoints.train_state import Checkpointer, CheckpointMismatch
    from tooln1.training.updater import TrainState

    ck = Checkpointer(str(tmp_path / "ck"), async_save=False)
    ck.save(1, TrainState(params={"w": jnp.zeros((4,))}, opt_state=()), {})
    with pytest.raises(CheckpointMismatch, match=r"ck/1: params/w has shape \(4,\), the model needs \(5,\)"):
        ck.restore(TrainState(params={"w": jnp.zeros((5,))}, opt_state=()))
    with pytest.raises(CheckpointMismatch, match=r"ck/1: missing arrays \['params/v'\]"):
        ck.restore(TrainState(params={"v": jnp.zeros((4,)), "w": jnp.zeros((4,))}, opt_state=()))
    ck.close()


def _truncate_arrays(step_dir):
    for blob in (step_dir / "state").rglob("*"):
        if blob.is_file() and blob.parent.name == "d":
            blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])


def test_restore_latest_skips_an_unreadable_step(tmp_path):
    from tooln1.checkpoints.train_state import Checkpointer, NoUsableCheckpoint
    from tooln1.training.updater import TrainState

    state = lambda v: TrainState(params={"w": jnp.full((256,), v)}, opt_state=())  # noqa: E731
    ck = Checkpointer(str(tmp_path / "ck"), keep=3, async_save=False)
    for step in (1, 2):
        ck.save(step, state(float(step)), {"n": step})
    ck.close()
    _truncate_arrays(tmp_path / "ck" / "2")
    warnings = []
    ck = Checkpointer(str(tmp_path / "ck"), keep=3)
    restored, meta = ck.restore_latest(state(0.0), warnings.append)
    assert meta["step"] == 1 and float(restored.params["w"][0]) == 1.0
    assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoint step 2 is unreadable (")
    assert f"{tmp_path}/ck/2/state" in warnings[0] and warnings[0].endswith("; resuming from step 1")
    assert ck.all_steps() == [1] and (tmp_path / "ck" / "unreadable-2").is_dir()
    ck.save(2, state(2.0), {"n": 2})  # the set-aside step can be written again
    ck.close()
    for step in (1, 2):
        _truncate_arrays(tmp_path / "ck" / str(step))
    ck = Checkpointer(str(tmp_path / "ck"), keep=3)
    with pytest.raises(NoUsableCheckpoint, match="no usable checkpoint \\(steps 2, 1 are unreadable\\)"):
        ck.restore_latest(state(0.0), warnings.append)
    ck.close()
    # Run again: the steps were set aside, and the run keeps refusing rather than restarting from 0.
    ck = Checkpointer(str(tmp_path / "ck"), keep=3)
    assert ck.all_steps() == []
    with pytest.raises(NoUsableCheckpoint, match="no usable checkpoint \\(steps 2, 1 are unreadable\\)"):
        ck.restore_latest(state(0.0), warnings.append)
    ck.close()
