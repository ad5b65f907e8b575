"""Loading HF models and tokenizers — the same code for the demo model, a local dir or a hub id."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from framework.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# "gpt2", "org/name": what a hub id looks like (a local path that does not exist may look the same).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFFLINE_HINT = "pass a local model directory, or unset HF_HUB_OFFLINE on a machine that can reach the hub"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _check_hub_id(path: str, key: str, probe_file: str) -> None:
    """A path that does not exist must be a hub id, and offline it must already be in the HF cache."""
    if not HUB_ID.match(path):
        raise UserError(f"{key}={path}: no such directory", "pass a local Hugging Face model directory or a hub id")
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, probe_file), str):
            raise UserError(f"{key}={path}: no such directory, and not available offline as a hub id "
                            "(HF_HUB_OFFLINE=1)", _OFFLINE_HINT)


def _check_weights(root: Path, key: str) -> None:
    weights = [root / name for name in WEIGHT_FILES if (root / name).is_file()] or sorted(root.glob("*.safetensors"))
    if not weights:
        raise UserError(f"{key}={root}: no weights (none of {', '.join(WEIGHT_FILES)})",
                        "save the model with save_pretrained into this directory")
    from safetensors import SafetensorError, safe_open

    for file in (w for w in weights if w.suffix == ".safetensors"):
        try:  # reads only the header: cheap, and catches truncated or foreign files before Ray starts
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise UserError(f"{key}={root}: unreadable weights {file.name} ({err})",
                            "re-save the model with save_pretrained") from None


def check_model_source(path: str, key: str, weights: bool = True) -> None:
    """Fail before any worker starts when `path` cannot be a loadable HF model: a local directory needs a
    parseable config.json (with model_type) and readable weights; anything else must look like a hub id."""
    root = Path(path).expanduser()
    if not root.exists():
        _check_hub_id(path, key, "config.json")
        return
    if not root.is_dir():
        raise UserError(f"{key}={path}: is a file, not a model directory", "pass the directory save_pretrained wrote")
    if not any(root.iterdir()):
        raise UserError(f"{key}={path}: the directory is empty", "pass the directory save_pretrained wrote")
    config = root / "config.json"
    if not config.is_file():
        raise UserError(f"{key}={path}: no config.json (not a Hugging Face model directory)",
                        "pass the directory save_pretrained wrote")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, AttributeError, OSError) as err:
        raise UserError(f"{key}={path}: config.json is not a readable JSON object ({err})",
                        "re-save the model with save_pretrained") from None
    if not model_type:
        raise UserError(f"{key}={path}: config.json has no model_type", "re-save the model with save_pretrained")
    if weights:
        _check_weights(root, key)


def check_tokenizer_source(path: str, key: str) -> None:
    """Like `check_model_source`, for a tokenizer directory or hub id."""
    root = Path(path).expanduser()
    if not root.exists():
        _check_hub_id(path, key, "tokenizer_config.json")
    elif not root.is_dir() or not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{key}={path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)})",
                        "set data.tokenizer=DIR to a directory the tokenizer was saved to")


@contextlib.contextmanager
def _loading(what: str, path: str) -> Iterator[None]:
    """transformers reports a bad directory or an unreachable hub id as OSError/ValueError, weights that do not
    fit the config as RuntimeError (and safetensors has its own error): name the path instead of showing a
    traceback from deep inside from_pretrained."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot load the {what} from {path}: {first}",
                        "pass a complete model saved with save_pretrained (a hub id must be in the local cache)") from err


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_tokenizer(path: str) -> Any:
    """AutoTokenizer with a pad token guaranteed (falls back to EOS, as TRL does)."""
    from transformers import AutoTokenizer

    with _loading("tokenizer", path):
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off in policy and reference: otherwise policy == reference does not give ρ = 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_causal_lm(path: str, dtype: str = "fp32", trust_remote_code: bool = False) -> torch.nn.Module:
    """Load a causal LM for training. Under ZeRO-3 the caller keeps an `HfDeepSpeedConfig` alive first, so
    transformers builds the weights already partitioned (zero.Init) instead of materialising them per rank."""
    from transformers import AutoModelForCausalLM

    torch_type = torch_dtype(dtype)
    with _loading("model", path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_type, trust_remote_code=trust_remote_code)
    disable_dropout(model)
    model.config.use_cache = False
    return model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them. Non-reentrant: the
    recompute calls the layer's submodules again, so ZeRO-3's hooks re-gather their weights. transformers also
    makes the embedding output require grad (what peft needs when LoRA freezes the embeddings)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise UserError(f"model.gradient_checkpointing=true, but {type(base).__name__} does not support it",
                        "set model.gradient_checkpointing=false")
    base.activation_checkpointing_enable({"use_reentrant": False})


def check_memory_options(path: str, gradient_checkpointing: bool, sequence_parallel: int,
                         trust_remote_code: bool = False) -> None:
    """Before Ray starts, from `path`'s config alone: the architecture supports gradient checkpointing, and
    Ulysses can split its attention heads (query and key/value heads) evenly over `sequence_parallel` ranks."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with _loading("model config", path):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if gradient_checkpointing and model_class is not None and not model_class.supports_gradient_checkpointing:
        raise UserError(f"model.gradient_checkpointing=true, but {model_class.__name__} ({path}) does not support it",
                        "set model.gradient_checkpointing=false")
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    # Ulysses gives each rank heads/N query heads; key/value heads are split too, or replicated when fewer.
    if sequence_parallel > 1 and (heads is None or heads % sequence_parallel or
                                  (kv_heads % sequence_parallel and sequence_parallel % kv_heads)):
        raise UserError(f"train.sequence_parallel={sequence_parallel} must divide the model's attention heads "
                        f"(num_attention_heads={heads}; num_key_value_heads={kv_heads} must divide it or be "
                        "divisible by it)", "pick a sequence_parallel degree that divides the attention heads")


def model_fingerprint(path: str) -> Optional[str]:
    """sha256 over the weight files and tokenizer of a local model dir (None for a hub id)."""
    import hashlib

    root = Path(path)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(root.iterdir()):
        if file.suffix in (".safetensors", ".bin") or file.name in ("tokenizer.json", "config.json"):
            digest.update(file.name.encode())
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def load_reward_model(path: str, dtype: str = "fp32", pad_token_id: Optional[int] = None,
                      trust_remote_code: bool = False) -> torch.nn.Module:
    """A causal LM checkpoint with a fresh scalar head (num_labels=1), or a saved reward model."""
    from transformers import AutoModelForSequenceClassification

    torch_type = torch_dtype(dtype)
    with _loading("reward model", path):
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch_type, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    disable_dropout(model)
    model.config.use_cache = False
    return model
