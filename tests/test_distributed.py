"""`t2v_jax.distributed.initialize`: when a process joins a distributed run, and the errors of a
half-configured one (all raised before JAX is touched; the two-process runs are in
tests/test_multihost.py)."""

import pytest

from t2v_jax import distributed


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*distributed.ENV_VARS, "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auto_on_one_host_does_nothing(clean_env):
    assert distributed.initialize("auto") is False


def test_off_refuses_a_multi_host_environment(clean_env):
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    clean_env.setenv("JAX_NUM_PROCESSES", "2")
    clean_env.setenv("JAX_PROCESS_ID", "1")
    with pytest.raises(distributed.DistributedError, match="JAX_NUM_PROCESSES=2"):
        distributed.initialize("off")


def test_off_refuses_a_multi_host_tpu_slice(clean_env):
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5")
    assert distributed.tpu_worker_count() == 4
    with pytest.raises(distributed.DistributedError, match="4 TPU workers"):
        distributed.initialize("off")


def test_half_set_environment_names_what_is_missing(clean_env):
    clean_env.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(
        distributed.DistributedError, match="JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID"
    ):
        distributed.initialize("auto")


def test_process_id_out_of_range(clean_env):
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    clean_env.setenv("JAX_NUM_PROCESSES", "2")
    clean_env.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(distributed.DistributedError, match=r"JAX_PROCESS_ID=2 must be in \[0"):
        distributed.initialize("auto")


def test_unknown_mode_names_the_config_field(clean_env):
    with pytest.raises(ValueError, match="train.distributed_init='yes'"):
        distributed.initialize("yes")


def test_one_process_helpers_are_local():
    assert distributed.is_primary()
    assert distributed.all_agree(True) and not distributed.all_agree(False)
    distributed.barrier("nothing to wait for")
