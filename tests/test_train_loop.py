"""The training loop on a stand-in model: resume, SIGTERM, SIGKILL at random points, divergence.

Runs that must be signalled execute this file as a subprocess (`python tests/test_train_loop.py
WORKDIR STEPS`), so the same task definition drives both the in-process and the killed runs.
"""

import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np

if __name__ == "__main__":  # a worker process: the same devices and cache as the test session
    # --default-opt-level: XLA's default backend optimisation level, as users run (the test
    # session uses 0 for compile time; see conftest).
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8" + (
        "" if "--default-opt-level" in sys.argv else " --xla_backend_optimization_level=0"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from t2v_jax import axes
from t2v_jax.train import checkpoint as ckpt_lib
from t2v_jax.train import loop
from t2v_jax.train import state as state_lib

BATCH_SHAPE = (8, 2, 4, 4, 3)  # [B, T, H, W, C]


class StandIn(nn.Module):
    @nn.compact
    def __call__(self, x):
        w1 = self.param(
            "w1", nn.with_logical_partitioning(nn.initializers.lecun_normal(), (axes.CHANNELS, axes.MLP)), (3, 8)
        )  # fmt: skip
        w2 = self.param(
            "w2", nn.with_logical_partitioning(nn.initializers.lecun_normal(), (axes.CONV_IN, axes.CONV_OUT)), (8, 3)
        )  # fmt: skip
        return jnp.tanh(x @ w1) @ w2


def loss_fn(params, frozen, rng, batch):
    del frozen
    noise = jax.random.normal(rng, batch["video"].shape)
    pred = StandIn().apply({"params": params["model"]}, batch["video"] + noise)
    return jnp.mean((pred - noise) ** 2), {}


def init_params(rng):
    return {"model": StandIn().init(rng, jnp.zeros(BATCH_SHAPE))["params"]}, {}


class NumpyBatches:
    """A deterministic batch source with a JSON position; optionally poisoned or slow."""

    def __init__(self, nan_from=None, delay=0.0):
        self.position = 0
        self.nan_from = nan_from
        self.delay = delay

    def __next__(self):
        time.sleep(self.delay)
        rng = np.random.default_rng(self.position)
        video = rng.uniform(-1, 1, BATCH_SHAPE).astype(np.float32)
        if self.nan_from is not None and self.position >= self.nan_from:
            video[0, 0, 0, 0, 0] = np.inf
        self.position += 1
        return {"video": video}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def make_config(steps, every=3, max_skips=10):
    return ml_collections.ConfigDict(
        {
            "seed": 0,
            "mesh": {"data": 2, "fsdp": 4, "tensor": 1},
            "train": {"batch_size": 8, "num_steps": steps, "learning_rate": 1e-2,
                      "warmup_steps": 2, "lr_schedule": "constant", "ema_decay": 0.9, "max_consecutive_skips": max_skips},
            "checkpoint": {"every_steps": every, "keep": 2, "async_save": True},
            "log": {"every_steps": 1},
        }
    )  # fmt: skip


def make_task(nan_from=None, delay=0.0):
    return loop.Task(init_params, loss_fn, lambda: NumpyBatches(nan_from, delay))


def read_final(workdir, steps):
    optimizer, _ = state_lib.make_optimizer(state_lib.TrainConfig(**make_config(steps).train))
    init = state_lib.make_init_fn(init_params, optimizer)
    mesh, rules = loop._mesh_and_rules(make_config(steps))
    abstract, _ = state_lib.state_shardings(init, mesh, rules)
    ckpt = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", ckpt_lib.CheckpointConfig())
    restored = ckpt.restore_latest(abstract)
    ckpt.close()
    return restored


def spawn(workdir, steps, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, __file__, str(workdir), str(steps), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def wait_for_line(proc, needle, timeout=120):
    start = time.time()
    lines = []
    while time.time() - start < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"never saw {needle!r}; output:\n{''.join(lines)}")


def test_resume_continues_exactly(tmp_path):
    """Stop at step 4 (num_steps=4), resume to 7: bitwise the run that went to 7 at once.

    A rerun that ignored its checkpoint and trained 7 steps from scratch would reproduce the
    straight run too, so the second call must say it restored step 4 and ran only 3 steps.
    """
    first = loop.train(make_config(4), tmp_path / "a", make_task())
    assert (first.resumed_from, first.steps_run) == (None, 4)
    resumed = loop.train(make_config(7), tmp_path / "a", make_task())
    assert (resumed.resumed_from, resumed.steps_run) == (4, 3)
    straight = loop.train(make_config(7), tmp_path / "b", make_task())
    assert resumed.step == straight.step == 7
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state),
                 jax.device_get(straight.state))  # fmt: skip
    assert read_final(tmp_path / "a", 7).data_state == {"position": 7}


def test_consecutive_non_finite_steps_stop_and_keep_the_last_good_checkpoint(tmp_path):
    with pytest.raises(loop.NonFiniteTrainingError, match="3 consecutive non-finite"):
        loop.train(make_config(20, every=2, max_skips=3), tmp_path, make_task(nan_from=5))
    # Steps 6, 7, 8 were non-finite: no checkpoint was written during the streak, so the
    # newest one is the last good step.
    restored = read_final(tmp_path, 20)
    assert restored.step == 4 and restored.data_state == {"position": 4}
    assert int(restored.state.skipped_steps) == 0


def _tree_of_files(directory):
    return {p: p.stat().st_mtime_ns for p in pathlib.Path(directory).rglob("*")}


def test_warm_start_takes_params_and_restarts_step_optimizer_and_data(tmp_path):
    """train.init_from: params/EMA from another run's newest checkpoint, fresh step, optimizer and
    data; the source directory is left untouched; a resumed run ignores init_from."""
    source = loop.train(make_config(4), tmp_path / "src", make_task())
    files_before = _tree_of_files(tmp_path / "src")
    config = make_config(1)
    config.train.init_from = str(tmp_path / "src")
    warm = loop.train(config, tmp_path / "warm", make_task())
    src_params, src_ema = jax.device_get((source.state.params, source.state.ema_params))
    params, ema = jax.device_get((warm.state.params, warm.state.ema_params))
    # The first update of a fresh optimizer is at learning rate 0 (linear warmup from 0), so the
    # params are still the source's and the EMA took one step (decay 0.9) towards them.
    jax.tree.map(np.testing.assert_array_equal, params, src_params)
    jax.tree.map(lambda e, s, p: np.testing.assert_allclose(e, 0.9 * s + 0.1 * p, rtol=1e-6),
                 ema, src_ema, src_params)  # fmt: skip
    assert warm.step == 1 and int(warm.state.opt_state[1][0].count) == 1
    assert read_final(tmp_path / "warm", 1).data_state == {"position": 1}
    assert _tree_of_files(tmp_path / "src") == files_before
    # Resuming the warm run reads its own checkpoint; init_from is not looked at again.
    config = make_config(2)
    config.train.init_from = str(tmp_path / "gone")
    assert loop.train(config, tmp_path / "warm", make_task()).step == 2


def test_warm_start_errors_name_the_field(tmp_path):
    config = make_config(1)
    config.train.init_from = str(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"train.init_from=.*no checkpoints/ directory"):
        loop.train(config, tmp_path / "a", make_task())
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    config.train.init_from = str(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"train.init_from=.*no usable checkpoint there"):
        loop.train(config, tmp_path / "b", make_task())


class Grown(nn.Module):
    """StandIn plus a zero-initialised extra layer (a model that gained a block)."""

    width: int = 3

    @nn.compact
    def __call__(self, x):
        y = StandIn(name="base")(x)
        extra = self.param(
            "extra", nn.with_logical_partitioning(nn.initializers.zeros, (axes.CHANNELS, axes.MLP)), (3, self.width)
        )  # fmt: skip
        return y + (x @ extra)[..., :3]


def _grown_task(width=3):
    def init(rng):
        return {"model": Grown(width).init(rng, jnp.zeros(BATCH_SHAPE))["params"]}, {}

    def loss(params, frozen, rng, batch):
        del frozen
        noise = jax.random.normal(rng, batch["video"].shape)
        pred = Grown(width).apply({"params": params["model"]}, batch["video"] + noise)
        return jnp.mean((pred - noise) ** 2), {}

    return loop.Task(init, loss, lambda: NumpyBatches())


def test_warm_start_into_a_grown_model_keeps_new_params_fresh(tmp_path):
    def nest(tree):  # StandIn's params as the grown model names them
        return {"model": {"base": tree["model"]}}

    source = loop.train(make_config(3), tmp_path / "src", make_task())
    # Re-save the source under the grown model's paths: a run whose model was StandIn at
    # model/base (same leaves), as a model that later gained "extra".
    state = source.state.replace(params=nest(source.state.params),
                                 ema_params=nest(source.state.ema_params))  # fmt: skip
    opt = state.opt_state
    adam = opt[1][0]._replace(mu=nest(opt[1][0].mu), nu=nest(opt[1][0].nu))
    state = state.replace(opt_state=(opt[0], (adam, *opt[1][1:])))
    ckpt = ckpt_lib.Checkpointer(tmp_path / "nested" / "checkpoints", ckpt_lib.CheckpointConfig())
    ckpt.save(3, state, {"position": 3}, {}, force=True)
    ckpt.close()

    config = make_config(1)
    config.train.init_from = str(tmp_path / "nested")
    warm = loop.train(config, tmp_path / "warm", _grown_task())
    params = jax.device_get(warm.state.params)["model"]
    src = jax.device_get(source.state.params)["model"]
    jax.tree.map(np.testing.assert_array_equal, params["base"], src)  # lr 0 on the first step
    assert not np.any(params["extra"])  # not in the source: its zero init, unchanged

    # A saved parameter with another shape, or one the model has no place for, is an error.
    config.train.init_from = str(tmp_path / "nested")
    with pytest.raises(ValueError, match=r"init_from=.*has no place for params"):
        loop.train(config, tmp_path / "dropped", make_task())
    config.train.init_from = str(tmp_path / "warm")
    with pytest.raises(ValueError, match=r"init_from=.*\['extra'\] has shape \(3, 3\) there"):
        loop.train(config, tmp_path / "reshaped", _grown_task(width=5))


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(tmp_path):
    proc = spawn(tmp_path, 300, "--delay=0.05")
    wait_for_line(proc, "step 5:")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preempted" in out
    restored = read_final(tmp_path, 300)
    assert 5 <= restored.step < 300
    assert restored.data_state == {"position": restored.step}


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bitwise_exact(tmp_path):
    steps = 24
    # The reference runs in a fresh process too: resumed runs always do, and this test is about
    # what a restart changes, not about what earlier tests left in this process.
    ref = spawn(tmp_path / "straight", steps)
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    straight = read_final(tmp_path / "straight", steps)
    rnd = random.Random(0)
    workdir = tmp_path / "killed"
    # Two kills at random steps, one while an async save is being written.
    for needle in (f"step {rnd.randint(2, 8)}:", "SAVING", f"step {rnd.randint(14, 20)}:"):
        proc = spawn(workdir, steps, "--delay=0.02", "--slow-save")
        wait_for_line(proc, needle)
        proc.kill()
        proc.wait()
    proc = spawn(workdir, steps)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    # The rerun resumed (a run that retrained from scratch would also match the straight one):
    # it restored a checkpoint written before the last kill and ran only the remaining steps.
    result = re.search(r"status completed step (\d+) resumed_from (\d+) steps_run (\d+)", out)
    assert result, out
    step, resumed_from, steps_run = map(int, result.groups())
    assert step == steps and 0 < resumed_from < steps and steps_run == steps - resumed_from
    assert f"at step {resumed_from}" in out and "resumed from" in out
    restored = read_final(workdir, steps)
    assert restored.step == steps
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.state),
                 jax.device_get(straight.state))  # fmt: skip


@pytest.mark.slow
def test_resume_and_sharding_hold_at_the_default_xla_optimization_level(tmp_path):
    """The bitwise resume and sharded == single-device claims at XLA's default optimisation
    level, which users run (every other test runs at level 0): in fresh processes."""
    steps = 7

    def run(workdir, num_steps, *extra):
        proc = spawn(workdir, num_steps, "--default-opt-level", *extra)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        return out

    run(tmp_path / "straight", steps)
    run(tmp_path / "resumed", 4)
    out = run(tmp_path / "resumed", steps)
    assert f"status completed step {steps} resumed_from 4 steps_run 3" in out, out
    straight, resumed = (read_final(tmp_path / d, steps) for d in ("straight", "resumed"))
    assert resumed.step == straight.step == steps
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state),
                 jax.device_get(straight.state))  # fmt: skip

    run(tmp_path / "single", steps, "--single-device")
    single = read_final(tmp_path / "single", steps)
    assert single.meta["config"]["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert straight.meta["config"]["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0),
                 jax.device_get(straight.state), jax.device_get(single.state))  # fmt: skip


def _worker(argv):
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("T2V_TEST_COMPILATION_CACHE",
                       os.path.join(os.path.expanduser("~"), ".cache", "t2v_jax_tests_xla")),
    )  # fmt: skip
    workdir, steps = argv[0], int(argv[1])
    delay = float(next((a.split("=")[1] for a in argv if a.startswith("--delay=")), 0.0))
    if "--slow-save" in argv:
        original = ckpt_lib.DataStateHandler.save

        def slow_save(self, directory, args):
            print("SAVING", flush=True)
            time.sleep(0.5)
            original(self, directory, args)

        ckpt_lib.DataStateHandler.save = slow_save
    config, devices = make_config(steps, every=2), None
    if "--single-device" in argv:
        config.mesh = {"data": 1, "fsdp": 1, "tensor": 1}
        devices = jax.devices()[:1]
    result = loop.train(config, workdir, make_task(delay=delay), devices=devices)
    print(f"status {result.status} step {result.step} resumed_from {result.resumed_from} "
          f"steps_run {result.steps_run}", flush=True)  # fmt: skip
    if result.status == "preempted":
        print("preempted", flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1:])
