"""LoRA through peft: adapters on a loaded model, the frozen base as the reference, and the two exports.

With LoRA the base weights never change, so the reference model *is* the policy with its adapters switched off:
one copy of the weights instead of two (`AdaptersDisabled`). Checkpoints then hold the adapter and its optimizer
state only (the seam excludes frozen parameters), and the export writes both a peft adapter directory and the
adapter merged into a plain HF model.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import torch

from framework.config import LoraConfig
from framework.errors import UserError

ADAPTER_DIR = "adapter"  # inside the export directory


def peft_config(lora: LoraConfig, reward: bool = False) -> Any:
    """The peft `LoraConfig`: from the saved adapter when `lora.adapter` is set, else from model.lora.*.
    A reward model (scalar head) trains its freshly initialised head in full (peft's SEQ_CLS task does that)."""
    import peft

    if lora.adapter is not None:
        config = peft.PeftConfig.from_pretrained(lora.adapter)
        config.inference_mode = False
        return config
    return peft.LoraConfig(
        r=lora.r, lora_alpha=lora.alpha if lora.alpha is not None else 2 * lora.r, lora_dropout=lora.dropout,
        target_modules=_targets(lora.target_modules), bias="none",
        task_type="SEQ_CLS" if reward else "CAUSAL_LM",
    )


def _targets(targets: Any) -> Any:
    return list(targets) if isinstance(targets, (list, tuple)) else targets


def apply_lora(model: torch.nn.Module, lora: LoraConfig, reward: bool = False) -> torch.nn.Module:
    """Wrap `model` in peft LoRA adapters (initialised as peft does: B = 0, so the policy starts equal to the
    base), or load the adapter `lora.adapter` as the trainable starting point. Only adapters (and a reward
    model's head) require grad."""
    import peft

    with _peft_errors(lora), _quiet_peft():
        if lora.adapter is not None:
            return peft.PeftModel.from_pretrained(model, lora.adapter, is_trainable=True)
        return peft.get_peft_model(model, peft_config(lora, reward))


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft asks the model `is_gradient_checkpointing`, which transformers 5 deprecates, and warns when an adapter
    is put on another path of the same base: neither is for the user to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*base_model_name_or_path. was renamed", category=UserWarning)
        yield


@contextlib.contextmanager
def _peft_errors(lora: LoraConfig) -> Iterator[None]:
    """peft says "Target modules {...} not found in the base model" as a ValueError: a user error, not our bug."""
    try:
        yield
    except ValueError as error:
        if isinstance(error, UserError):
            raise
        first = (str(error).strip().splitlines() or ["?"])[0]
        source = (f"model.lora.adapter={lora.adapter}" if lora.adapter
                  else f"model.lora.target_modules={lora.target_modules}")
        raise UserError(f"{source}: {first}", "name modules the model has (model.lora.target_modules=all-linear "
                        "targets every linear layer)") from error


def check_lora(model_path: str, lora: LoraConfig, reward: bool = False, trust_remote_code: bool = False) -> None:
    """Before Ray starts: build the model on the meta device (no weights read) and apply the adapters, so a
    target module the model lacks, or an adapter that does not fit the base, fails in a second with one line."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if lora.adapter is not None:
        _check_adapter_dir(lora.adapter)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if reward:
        config.num_labels = 1
    model_class = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    with torch.device("meta"):
        model = model_class.from_config(config, trust_remote_code=trust_remote_code)
    import peft

    with _peft_errors(lora), _quiet_peft():
        wrapped = peft.get_peft_model(model, peft_config(lora, reward))
    if lora.adapter is not None:
        _check_adapter_fits(wrapped, lora.adapter, model_path)


def _check_adapter_dir(path: str) -> None:
    root = Path(path)
    if not (root / "adapter_config.json").is_file():
        raise UserError(f"model.lora.adapter={path}: no adapter_config.json (not a peft adapter directory)",
                        "pass a directory written by PeftModel.save_pretrained, e.g. runs/x/export/adapter")
    try:
        config = json.loads((root / "adapter_config.json").read_text())
    except ValueError as err:
        raise UserError(f"model.lora.adapter={path}: adapter_config.json is not readable JSON ({err})") from None
    if config.get("peft_type") != "LORA":
        raise UserError(f"model.lora.adapter={path}: a {config.get('peft_type')} adapter, not LoRA")
    if not any((root / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UserError(f"model.lora.adapter={path}: no adapter weights (adapter_model.safetensors)")


def _check_adapter_fits(wrapped: torch.nn.Module, adapter: str, model_path: str) -> None:
    """Every tensor of the saved adapter must exist in the base model wrapped with the adapter's config, with
    the same shape (peft itself only warns about missing keys and fails late on shapes)."""
    from peft.utils import load_peft_weights

    saved = load_peft_weights(adapter, device="cpu")
    expected = {_strip_adapter_name(name): tuple(p.shape) for name, p in wrapped.named_parameters()
                if "lora_" in name or "modules_to_save" in name}
    for name, tensor in saved.items():
        shape = expected.get(_strip_adapter_name(name))
        if shape != tuple(tensor.shape):
            found = "not in the model" if shape is None else f"shape {list(shape)} in the model"
            raise UserError(f"model.lora.adapter={adapter} does not match model.path={model_path}: {name} has shape "
                            f"{list(tensor.shape)}, {found}", "train on the base model the adapter was made for")


def _strip_adapter_name(name: str) -> str:
    """`…q_proj.lora_A.default.weight` (in the model) and `…q_proj.lora_A.weight` (in the file) alike."""
    return name.replace(".default.", ".").replace(".modules_to_save.", ".")


class AdaptersDisabled:
    """The reference as a view of the policy: the same engine (and, under ZeRO-3, the same partitions) with the
    LoRA adapters switched off for the forward. Callers run it under no_grad, like any reference."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __call__(self, **kwargs: Any) -> Any:
        with _peft_model(self.engine).disable_adapter():
            return self.engine(**kwargs)


def _peft_model(engine: Any) -> Any:
    return getattr(engine, "module", engine)


def parameter_counts(model: torch.nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameters; under ZeRO-3 each partitioned parameter counts its full size."""
    def size(p: torch.nn.Parameter) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    params = list(model.parameters())
    return sum(size(p) for p in params if p.requires_grad), sum(size(p) for p in params)


def export_lora(state_dict: Dict[str, torch.Tensor], base_model_path: str, tokenizer_path: str, lora: LoraConfig,
                out_dir: str, reward: bool = False, dtype: torch.dtype = torch.float32) -> Path:
    """`out_dir` = the adapters merged into a plain HF model (`from_pretrained` needs no peft), and
    `out_dir/adapter` = the peft adapter (`PeftModel.from_pretrained(base, out_dir/adapter)`). `state_dict` holds
    the trained adapter (and head) tensors under the engine's names. Written atomically (temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from framework.model.export import replace_dir
    from framework.model.loading import load_reward_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if reward:
        base = load_reward_model(base_model_path, "fp32", tokenizer.pad_token_id)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    model = apply_lora(base, lora, reward)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(state_dict))
    unexpected = sorted(set(state_dict) - {name for name, _ in model.named_parameters()})
    if missing or unexpected:
        raise RuntimeError(f"export: the checkpoint's adapter does not match: missing={missing[:5]} "
                           f"unexpected={unexpected[:5]}")
    model.load_state_dict(state_dict, strict=False)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    with _quiet_peft():
        model.save_pretrained(tmp / ADAPTER_DIR)
    _set_base_path(tmp / ADAPTER_DIR, base_model_path)
    merged = model.merge_and_unload()
    merged.to(dtype).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp / ADAPTER_DIR)
    replace_dir(tmp, out)
    return out


def _set_base_path(adapter_dir: Path, base_model_path: str) -> None:
    """Record the absolute base path so `PeftModel.from_pretrained` users (and model.lora.adapter) find it."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    local = Path(base_model_path)
    config["base_model_name_or_path"] = str(local.resolve()) if local.exists() else base_model_path
    path.write_text(json.dumps(config, indent=2))


def lora_summary(model: torch.nn.Module) -> Dict[str, Any]:
    """What run_info.json records about the parameters being trained (before the engine wraps `model`)."""
    trainable, total = parameter_counts(model)
    info: Dict[str, Any] = {"trainable_params": trainable, "total_params": total}
    config = getattr(model, "peft_config", {}).get("default")
    if config is not None:
        targets = config.target_modules
        info["lora"] = {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                        "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets}
    return info
