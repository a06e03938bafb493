"""Test-wide setup: 8 fake CPU devices, a persistent compilation cache, the `slow` marker.

XLA_FLAGS must be set before jax is imported anywhere, which is why this happens at the top of
conftest (pytest imports it before any test module).
"""

import os

# backend_optimization_level=0: XLA:CPU's LLVM passes dominate compile time for the tiny test
# models (threefry PRNG kernels especially): a tiny U-Net's init compiled in 71 s at the default
# level and 14 s at 0 on this 2-core machine, while run time barely changed. Only tests use it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

# Compiles dominate tiny-model tests; a persistent cache makes reruns (and CI's second pass over
# the same shapes in other test files) much cheaper.
_CACHE_DIR = os.environ.get(
    "T2V_TEST_COMPILATION_CACHE",
    os.path.join(os.path.expanduser("~"), ".cache", "t2v_jax_tests_xla"),
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run @slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def build_tiny_pipeline():
    """`(one_device=True, encoder_seed=1, params_seed=0) -> Pipeline`: the random base -> TSR ->
    SSR cascade of configs/tiny.py (the tests' stand-in for the demo), on one device or on
    the default mesh over every (fake) device."""
    import pathlib

    from t2v_jax import cascade, sharding
    from t2v_jax.configlib import load_config

    tiny = pathlib.Path(__file__).resolve().parent.parent / "configs" / "tiny.py"

    def build(one_device: bool = True, encoder_seed: int = 1, params_seed: int = 0):
        configs = [load_config(f"{tiny}:{stage}") for stage in ("base", "tsr", "ssr")]
        encoder = cascade.text_encoder_from_config(configs[0].text, jax.random.key(encoder_seed))
        mesh = None
        if one_device:
            mesh = sharding.make_mesh(sharding.MeshConfig(), devices=jax.devices()[:1])
        return cascade.build_pipeline(configs, encoder, jax.random.key(params_seed), mesh=mesh)

    return build


@pytest.fixture(scope="session")
def load_tool():
    """`(name) -> module`: tools/<name>.py imported as a module (tools/ is not a package)."""
    import importlib.util
    import pathlib

    tools = pathlib.Path(__file__).resolve().parent.parent / "tools"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, tools / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def recording_python():
    """`make(folder) -> (stub, calls)`: a stand-in `python` in `folder` for the shell tools'
    tests (pass it as $PYTHON) that only records its command lines, and `calls()`, the lines it
    recorded so far."""

    def make(folder):
        log = folder / "python_calls.txt"
        stub = folder / "python"
        stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
        stub.chmod(0o755)
        return stub, lambda: log.read_text().splitlines() if log.exists() else []

    return make
