"""Loading HF models and tokenizers — the same code for the demo model, a local dir or a hub id."""

from __future__ import annotations

from typing import Any, Optional

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_tokenizer(path: str) -> Any:
    """AutoTokenizer with a pad token guaranteed (falls back to EOS, as TRL does)."""
    from transformers import AutoTokenizer

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

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    disable_dropout(model)
    model.config.use_cache = False
    return model


def model_fingerprint(path: str) -> Optional[str]:
    """sha256 over the weight files and tokenizer of a local model dir (None for a hub id)."""
    import hashlib
    from pathlib import Path

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

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    disable_dropout(model)
    model.config.use_cache = False
    return model
