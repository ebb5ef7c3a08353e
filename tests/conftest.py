"""Shared fixtures. Eight host CPU devices for every test, so sharded runs use a real mesh.

The tests' models are tiny, so XLA's CPU backend optimisations cost far more compile time than they
save at run time: turning them off makes the suite's compiles several times cheaper.
"""
import os

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true",
)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny random Qwen2 checkpoint (tied, non-zero q/k/v biases) with the tiny tokenizer."""
    from tooln1.checkpoints.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_qwen2")), nonzero_biases=True, random_norms=True)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tooln1.checkpoints.tiny import load_tiny_tokenizer

    return load_tiny_tokenizer()


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bfcl_checker() -> None:
    """BFCL's data and checker (``nvidia-bfcl``); tests that need them skip when it is missing."""
    from tooln1.eval import bfcl

    try:
        bfcl.require_checker()
    except bfcl.MissingBFCLError:
        pytest.skip(f"nvidia-bfcl not installed: {bfcl.INSTALL_HINT}")


@pytest.fixture(autouse=True)
def no_leftover_compile_cache():
    """`run_training` points JAX's persistent compile cache into its run's workdir; the tests after it
    must not keep serializing every executable there (XLA:CPU once crashed doing so late in the suite)."""
    yield
    import jax
    from jax._src import compilation_cache

    if jax.config.jax_compilation_cache_dir is not None:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()


def pytest_collection_modifyitems(session, config, items):
    """tests/test_update.py first: run after the rest of the suite, XLA:CPU has segfaulted compiling its
    programs (the cause is not found yet); fresh, they compile as always."""
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_update.py")
