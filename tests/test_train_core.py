"""Train state, sharded step, NaN skip and checkpoints, on a tiny stand-in model (fast)."""

import dataclasses
import logging
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax import axes, sharding
from t2v_jax.train import checkpoint as ckpt_lib
from t2v_jax.train import state as state_lib
from t2v_jax.train import step as step_lib

BATCH_SHAPE = (8, 2, 4, 4, 3)  # [B, T, H, W, C]


class StandIn(nn.Module):
    """Two logically named dense layers over channels: enough to shard over fsdp=4."""

    @nn.compact
    def __call__(self, x):
        w1 = self.param(
            "w1",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (axes.CHANNELS, axes.MLP)),
            (3, 8),
        )
        w2 = self.param(
            "w2",
            nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (axes.CONV_IN, axes.CONV_OUT)
            ),
            (8, 3),
        )
        b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, (axes.NORM,)), (3,))
        return jnp.tanh(x @ w1) @ w2 + b


def loss_fn(params, frozen, rng, batch):
    del frozen
    x = batch["video"]
    noise = jax.random.normal(rng, x.shape)
    pred = StandIn().apply({"params": params["model"]}, x + noise)
    loss = jnp.mean((pred - noise) ** 2)
    return loss, {"mse": loss}


def init_params(rng):
    params = StandIn().init(rng, jnp.zeros(BATCH_SHAPE))["params"]
    return {"model": params}, {}


def make_batch(i):
    rng = np.random.default_rng(1000 + i)
    return {"video": rng.uniform(-1, 1, BATCH_SHAPE).astype(np.float32)}


def setup(mesh, cfg=None):
    cfg = cfg or state_lib.TrainConfig(learning_rate=1e-2, warmup_steps=2, num_steps=20)
    optimizer, schedule = state_lib.make_optimizer(cfg)
    init = state_lib.make_init_fn(init_params, optimizer)
    state, shardings = state_lib.create_train_state(init, 0, mesh, sharding.DEFAULT_RULES)
    fn = step_lib.make_train_step(loss_fn, optimizer, schedule, 0.9)
    step = step_lib.jit_train_step(fn, shardings, make_batch(0), mesh)
    return init, state, shardings, step


def run(mesh, steps, batches=make_batch):
    _, state, _, step = setup(mesh)
    metrics = []
    for i in range(steps):
        state, m = step(state, sharding.shard_host_batch(batches(i), mesh))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def mesh_of(data, fsdp):
    return sharding.make_mesh(
        sharding.MeshConfig(data=data, fsdp=fsdp), jax.devices()[: data * fsdp]
    )


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_state_is_created_sharded_with_logical_names():
    mesh = mesh_of(2, 4)
    _, state, shardings, _ = setup(mesh)
    w2 = state.params["model"]["w2"]
    assert w2.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert w2.addressable_shards[0].data.shape == (2, 3)
    # The Adam moments shard like the params they follow.
    mu = state.opt_state[1][0].mu["model"]["w2"]
    assert mu.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert shardings.params["model"]["w2"].spec == w2.sharding.spec
    assert int(state.step) == 0 and state.rng.dtype == jnp.uint32
    # EMA starts as an exact copy of the params.
    assert_trees_equal(state.ema_params, state.params)


def test_sharded_step_equals_single_device_step():
    sharded, m8 = run(mesh_of(2, 4), 4)
    single, m1 = run(mesh_of(1, 1), 4)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    np.testing.assert_allclose([m["loss"] for m in m8], [m["loss"] for m in m1], atol=1e-6)
    assert int(sharded.step) == 4


def test_step_matches_hand_written_adamw_and_ema():
    """One step against Adam's closed-form first update and the EMA formula."""
    mesh = mesh_of(1, 1)
    cfg = state_lib.TrainConfig(learning_rate=1e-2, warmup_steps=0, lr_schedule="constant",
                                grad_clip_norm=0.0, weight_decay=0.0)  # fmt: skip
    _, state, _, step = setup(mesh, cfg)
    before = jax.device_get(state)
    batch = make_batch(0)
    new, metrics = step(state, sharding.shard_host_batch(batch, mesh))
    rng = jax.random.fold_in(before.rng, 0)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, _), grads = grad_fn(before.params, {}, rng, batch)
    # Adam's first step in closed form: the bias-corrected moments are g and g**2, so the
    # update is -lr * g / (|g| + eps).
    expect = jax.tree.map(lambda p, g: p - 1e-2 * g / (np.abs(g) + 1e-8), before.params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new.params, expect)
    ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, before.params, expect)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new.ema_params, ema)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(
        metrics["grad_norm"],
        np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))),
        rtol=1e-5,
    )
    np.testing.assert_allclose(metrics["learning_rate"], 1e-2)


@pytest.mark.parametrize("data,fsdp", [(1, 1), (2, 2)])
def test_accumulated_step_is_the_mean_over_interleaved_microbatches(data, fsdp):
    """grad_accum_steps=2 against a hand computation: microbatch i holds rows i, i+2, ..., its
    noise key is fold_in(step key, i), and the update is Adam's first step on the mean grads."""
    mesh = mesh_of(data, fsdp)
    cfg = state_lib.TrainConfig(learning_rate=1e-2, warmup_steps=0, lr_schedule="constant",
                                grad_clip_norm=0.0, weight_decay=0.0, grad_accum_steps=2)  # fmt: skip
    optimizer, schedule = state_lib.make_optimizer(cfg)
    init = state_lib.make_init_fn(init_params, optimizer)
    state, shardings = state_lib.create_train_state(init, 0, mesh, sharding.DEFAULT_RULES)
    fn = step_lib.make_train_step(loss_fn, optimizer, schedule, 0.9, cfg.grad_accum_steps)
    step = step_lib.jit_train_step(fn, shardings, make_batch(0), mesh)
    before = jax.device_get(state)
    batch = make_batch(0)
    new, metrics = step(state, sharding.shard_host_batch(batch, mesh))

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    rng = jax.random.fold_in(before.rng, 0)
    parts = [grad_fn(before.params, {}, jax.random.fold_in(rng, i), {"video": batch["video"][i::2]})
             for i in range(2)]  # fmt: skip
    loss = np.mean([p[0][0] for p in parts])
    grads = jax.tree.map(lambda a, b: (a + b) / 2, parts[0][1], parts[1][1])
    expect = jax.tree.map(lambda p, g: p - 1e-2 * g / (np.abs(g) + 1e-8), before.params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new.params, expect)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["mse"], loss, rtol=1e-5)


def test_grad_accum_steps_must_split_the_batch():
    with pytest.raises(
        ValueError, match="train.batch_size=6 must be a multiple of train.grad_accum_steps=4"
    ):
        state_lib.TrainConfig(batch_size=6, grad_accum_steps=4)
    with pytest.raises(ValueError, match="train.grad_accum_steps must be >= 1"):
        state_lib.TrainConfig(grad_accum_steps=0)
    # The loop's check, before anything compiles: microbatches must split over the mesh too.
    import ml_collections

    from t2v_jax.train import loop

    config = ml_collections.ConfigDict(
        {"train": {"batch_size": 8, "grad_accum_steps": 2}, "mesh": {"data": 1, "fsdp": 8}}
    )
    with pytest.raises(ValueError, match="data\\*fsdp=8 times train.grad_accum_steps=2"):
        loop.check_config(config, 8, 1)
    config.train.grad_accum_steps = 1
    loop.check_config(config, 8, 1)


def test_nan_batch_skips_exactly_that_step():
    def poisoned(i):
        batch = make_batch(i)
        if i == 2:
            batch["video"][0, 0, 0, 0, 0] = np.nan
        return batch

    mesh = mesh_of(2, 4)
    _, state, _, step = setup(mesh)
    clean_states, poisoned_states, metrics = [], [], []
    for batches, out in ((make_batch, clean_states), (poisoned, poisoned_states)):
        _, state, _, step = setup(mesh)
        for i in range(4):
            state, m = step(state, sharding.shard_host_batch(batches(i), mesh))
            out.append(jax.device_get(state))
            if batches is poisoned:
                metrics.append(jax.device_get(m))
    # Before the NaN: identical to the clean run.
    assert_trees_equal(poisoned_states[1], clean_states[1])
    # The NaN step: nothing trained changed, only the counters moved.
    before, after = poisoned_states[1], poisoned_states[2]
    for name in ("params", "ema_params", "opt_state", "rng", "frozen"):
        assert_trees_equal(getattr(after, name), getattr(before, name))
    assert (int(after.step), int(after.skipped_steps), int(after.consecutive_skips)) == (3, 1, 1)
    assert [int(m["skipped"]) for m in metrics] == [0, 0, 1, 0]
    assert not np.isfinite(metrics[2]["loss"])
    # The next step trains again and resets the consecutive counter.
    last = poisoned_states[3]
    assert int(last.consecutive_skips) == 0 and int(last.skipped_steps) == 1
    assert np.isfinite(metrics[3]["loss"])
    assert not np.array_equal(last.params["model"]["w2"], after.params["model"]["w2"])


def test_two_runs_with_the_same_seed_are_bitwise_equal():
    a, ma = run(mesh_of(2, 4), 3)
    b, mb = run(mesh_of(2, 4), 3)
    assert_trees_equal(a, b)
    assert_trees_equal(ma, mb)


def _saved_run(tmp_path, steps, every=2, keep=5):
    mesh = mesh_of(2, 4)
    init, state, _, step = setup(mesh)
    ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", ckpt_lib.CheckpointConfig(every, keep, True))
    for i in range(steps):
        state, _ = step(state, sharding.shard_host_batch(make_batch(i), mesh))
        ckpt.save(i + 1, state, {"position": i + 1}, {"seed": 0})
    ckpt.wait()
    return init, jax.device_get(state), ckpt


def test_restore_onto_a_different_mesh_gives_identical_values(tmp_path):
    init, saved, ckpt = _saved_run(tmp_path, 4)
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()
    for data, fsdp in ((8, 1), (1, 1), (2, 4)):
        mesh = mesh_of(data, fsdp)
        abstract, _ = state_lib.state_shardings(init, mesh, sharding.DEFAULT_RULES)
        reader = ckpt_lib.Checkpointer(tmp_path / "ckpt", ckpt_lib.CheckpointConfig(2, 5, True))
        restored = reader.restore_latest(abstract)
        reader.close()
        assert restored.step == 4 and restored.data_state == {"position": 4}
        assert restored.meta["config"] == {"seed": 0}
        assert_trees_equal(jax.device_get(restored.state), saved)
        w2 = restored.state.params["model"]["w2"]
        assert w2.sharding.mesh.shape == mesh.shape


def test_async_save_timeout_is_the_configs(tmp_path):
    # Orbax's own 20 min default failed a real save on a loaded 2-core host (CheckpointConfig).
    for timeout in (None, 77):
        cfg = ckpt_lib.CheckpointConfig() if timeout is None else ckpt_lib.CheckpointConfig(
            async_timeout_s=timeout)  # fmt: skip
        ckpt = ckpt_lib.Checkpointer(tmp_path / str(timeout), cfg)
        assert ckpt.manager._options.async_options.timeout_secs == (timeout or 4 * 3600)
        ckpt.close()
    with pytest.raises(ValueError, match="checkpoint.async_timeout_s"):
        ckpt_lib.CheckpointConfig(async_timeout_s=0)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_latest_checkpoint_falls_back_to_the_previous_step(tmp_path, caplog, damage):
    init, _, ckpt = _saved_run(tmp_path, 4)
    ckpt.close()
    # The array data of the newest step: truncate a chunk file, or flip bytes in the largest one.
    files = sorted(
        (p for p in (tmp_path / "ckpt" / "4" / "state").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    target = [p for p in files if "d" in p.parts or "ocdbt" in str(p)] or files
    # Damage every array-data file: which file holds which array depends on write timing, and
    # damaging only the largest one once left the arrays this restore reads intact (flaky).
    for victim in target:
        raw = bytearray(victim.read_bytes())
        if damage == "truncate":
            victim.write_bytes(bytes(raw[: len(raw) // 2]))
        else:
            mid = len(raw) // 2
            raw[mid : mid + 8] = bytes(b ^ 0xFF for b in raw[mid : mid + 8])
            victim.write_bytes(bytes(raw))
    mesh = mesh_of(2, 4)
    abstract, _ = state_lib.state_shardings(init, mesh, sharding.DEFAULT_RULES)
    reader = ckpt_lib.Checkpointer(tmp_path / "ckpt", ckpt_lib.CheckpointConfig(2, 5, True))
    with caplog.at_level(logging.WARNING, logger="t2v_jax.train.checkpoint"):
        restored = reader.restore_latest(abstract)
    reader.close()
    assert restored.step == 2 and restored.data_state == {"position": 2}
    assert "step 4" in caplog.text and "falling back to step 2" in caplog.text
    assert reader.all_steps() == [2]
    assert list((tmp_path / "ckpt_corrupt").iterdir())


def test_values_that_decode_but_differ_fail_the_fingerprint_check(tmp_path, caplog):
    """Step 4's state item replaced by a valid one in which one leaf differs: tensorstore reads
    it without complaint, so only the fingerprints saved in meta can tell, and must."""
    init, saved, ckpt = _saved_run(tmp_path, 4)
    ckpt.close()
    # The same state with one parameter changed, saved as step 4 elsewhere, then moved into the
    # run's step 4 in place of its state item (its meta, with the original fingerprints, stays).
    mesh = mesh_of(2, 4)
    abstract, shardings = state_lib.state_shardings(init, mesh, sharding.DEFAULT_RULES)
    state = jax.device_put(saved, shardings)
    w2 = state.params["model"]["w2"]
    changed = state.replace(params={"model": {**state.params["model"], "w2": w2 + 0.5}})
    other = ckpt_lib.Checkpointer(tmp_path / "other", ckpt_lib.CheckpointConfig(2, 5, False))
    other.save(4, changed, {"position": 4}, {"seed": 0}, force=True)
    other.close()
    target = tmp_path / "ckpt" / "4" / "state"
    shutil.rmtree(target)
    shutil.copytree(tmp_path / "other" / "4" / "state", target)

    reader = ckpt_lib.Checkpointer(tmp_path / "ckpt", ckpt_lib.CheckpointConfig(2, 5, True))
    with caplog.at_level(logging.WARNING, logger="t2v_jax.train.checkpoint"):
        restored = reader.restore_latest(abstract)
    reader.close()
    assert "step 4" in caplog.text and "falling back to step 2" in caplog.text
    assert "do not match the fingerprints saved with them" in caplog.text
    assert restored.step == 2 and restored.data_state == {"position": 2}
    assert reader.all_steps() == [2]
    (quarantined,) = (tmp_path / "ckpt_corrupt").iterdir()
    assert quarantined.name.startswith("4-")


def test_fingerprint_sees_one_flipped_bit_and_swapped_values():
    x = jnp.arange(16, dtype=jnp.float32)
    base = ckpt_lib.fingerprint({"x": x})
    flipped = jax.lax.bitcast_convert_type(x, jnp.uint32).at[5].add(1)
    assert ckpt_lib.fingerprint({"x": jax.lax.bitcast_convert_type(flipped, jnp.float32)}) != base
    assert ckpt_lib.fingerprint({"x": x[::-1]}) != base
    assert ckpt_lib.fingerprint({"x": x}) == base


def test_read_only_subtree_restore_skips_a_damaged_step_and_touches_nothing(tmp_path, caplog):
    """What a warm start reads: params/EMA/frozen without a target structure, verified, from a
    directory it must not change (a damaged step is skipped, not moved aside)."""
    init, _, ckpt = _saved_run(tmp_path, 4)
    ckpt.close()
    mesh = mesh_of(2, 4)
    abstract, _ = state_lib.state_shardings(init, mesh, sharding.DEFAULT_RULES)
    fields = tuple(f.name for f in dataclasses.fields(state_lib.TrainState))
    wanted = ("params", "ema_params", "frozen")
    reader = ckpt_lib.Checkpointer(tmp_path / "ckpt", ckpt_lib.CheckpointConfig(), read_only=True)
    step, trees = reader.restore_latest_subtrees(fields, wanted)
    full = reader.restore_latest(abstract)
    reader.close()
    assert step == full.step == 4
    assert_trees_equal(jax.device_get(trees["params"]), jax.device_get(full.state.params))
    assert_trees_equal(jax.device_get(trees["ema_params"]), jax.device_get(full.state.ema_params))
    for victim in (p for p in (tmp_path / "ckpt" / "4" / "state").rglob("*") if p.is_file()):
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    reader = ckpt_lib.Checkpointer(tmp_path / "ckpt", ckpt_lib.CheckpointConfig(), read_only=True)
    with caplog.at_level(logging.WARNING, logger="t2v_jax.train.checkpoint"):
        step, _ = reader.restore_latest_subtrees(fields, wanted)
    reader.close()
    assert step == 2 and "step 4" in caplog.text and "skipped" in caplog.text
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing moved or cleaned
    with pytest.raises(RuntimeError, match="read-only"):
        reader.save(6, full.state, {}, {}, force=True)
