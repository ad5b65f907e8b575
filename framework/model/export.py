"""HF export: consolidated weights → `save_pretrained` (safetensors) + tokenizer, loadable by from_pretrained."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Dict

import torch


def export_hf(state_dict: Dict[str, torch.Tensor], base_model_path: str, tokenizer_path: str, out_dir: str,
              dtype: torch.dtype = torch.float32, reward_model: bool = False) -> Path:
    """Write an HF model dir atomically (temp dir + rename); the previous export, if any, is replaced only
    once the new one is complete. A reward model is saved as a sequence-classification model (num_labels=1)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(base_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model_class = AutoModelForCausalLM
    if reward_model:
        config.num_labels = 1
        config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
        model_class = AutoModelForSequenceClassification
    with torch.device("meta"):
        model = model_class.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"export: checkpoint does not match {base_model_path}: missing={missing[:5]} unexpected={unexpected[:5]}")
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out)
    return out


def replace_dir(tmp: Path, out: Path) -> None:
    """Publish the complete directory `tmp` as `out`; a previous `out` is replaced only now."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
