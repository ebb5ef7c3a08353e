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


@pytest.fixture(autouse=True, scope="module")
def drop_compiled_programs():
    """Drop each test module's compiled programs when it ends: XLA:CPU maps every executable's code
    into the process, and the whole suite's programs outgrow the kernel's limit on mappings
    (vm.max_map_count, 65,530), after which the next compile crashes the process."""
    yield
    import jax

    jax.clear_caches()
