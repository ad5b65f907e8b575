"""LoRA (peft) without Ray: the adapters-off reference is the base model, the exports score like the engine's
model, and what cannot work is refused before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framework.config import ConfigError, LoraConfig
from framework.errors import UserError
from framework.model.batching import collate
from framework.model.logprobs import sequence_logps

PROMPTS = [[5, 6, 7, 8], [9, 10]]
RESPONSES = [[[11, 12, 13], [14, 15]], [[16], [17, 18, 19, 20]]]


def _batch():
    return collate(PROMPTS, RESPONSES, pad_id=0)


def _plain_logps(model_dir: str) -> torch.Tensor:
    """Response log-prob sums with plain transformers (no framework code), for comparison."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for prompt, responses in zip(PROMPTS, RESPONSES):
            for response in responses:
                ids = torch.tensor([prompt + response])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                targets = ids[0, 1:]
                out.append(sum(float(logp[t, targets[t]]) for t in range(len(prompt) - 1, ids.shape[1] - 1)))
    return torch.tensor(out, dtype=torch.float64).view(2, 2)


def _trained_lora(tiny_model_dir: str, lora: LoraConfig, seed: int = 1):
    """The tiny model with adapters whose B is no longer zero, as after some training."""
    from framework.model.loading import load_causal_lm
    from framework.model.lora import apply_lora

    model = apply_lora(load_causal_lm(tiny_model_dir), lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


def test_only_adapters_train_and_the_policy_starts_as_the_base(tiny_model_dir):
    from framework.model.loading import load_causal_lm
    from framework.model.lora import apply_lora, lora_summary

    model = apply_lora(load_causal_lm(tiny_model_dir), LoraConfig(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}  # peft's Llama default
    info = lora_summary(model)
    assert info["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert 0 < info["trainable_params"] < info["total_params"] / 10
    with torch.no_grad():  # B = 0 at init: same log-probs as the base
        assert torch.allclose(sequence_logps(model, _batch())["logps"].double(), _plain_logps(tiny_model_dir), atol=1e-4)


def test_adapters_disabled_is_the_base_model(tiny_model_dir):
    from framework.model.lora import AdaptersDisabled

    model = _trained_lora(tiny_model_dir, LoraConfig(r=4, target_modules="all-linear"))
    base = _plain_logps(tiny_model_dir)
    with torch.no_grad():
        policy = sequence_logps(model, _batch())["logps"].double()
        reference = sequence_logps(AdaptersDisabled(model), _batch())["logps"].double()
        again = sequence_logps(model, _batch())["logps"].double()
    assert torch.allclose(reference, base, atol=1e-4)
    assert (policy - base).abs().max() > 1e-2  # the adapters do change the policy...
    assert torch.equal(policy, again)  # ...and are on again after the reference forward


@pytest.mark.parametrize("targets", [None, "all-linear"])
def test_export_merged_and_adapter_score_like_the_trained_model(tiny_model_dir, tmp_path, targets):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from framework.model.lora import export_lora

    lora = LoraConfig(r=4, alpha=16, target_modules=targets)
    model = _trained_lora(tiny_model_dir, lora)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = export_lora(state, tiny_model_dir, tiny_model_dir, lora, str(tmp_path / "export"))
    with torch.no_grad():
        engine = sequence_logps(model, _batch())["logps"]
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())  # a plain HF model
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter").eval()
        assert torch.allclose(sequence_logps(merged, _batch())["logps"], engine, atol=1e-4)
        assert torch.allclose(sequence_logps(adapter, _batch())["logps"], engine, atol=1e-5)
    assert (out / "tokenizer.json").exists() and not list(tmp_path.glob(".export-*"))


def test_training_from_a_saved_adapter_starts_where_it_ended(tiny_model_dir, tmp_path):
    from framework.model.loading import load_causal_lm
    from framework.model.lora import apply_lora, check_lora

    trained = _trained_lora(tiny_model_dir, LoraConfig(r=4))
    trained.save_pretrained(tmp_path / "adapter")
    lora = LoraConfig(adapter=str(tmp_path / "adapter"))
    check_lora(tiny_model_dir, lora)
    resumed = apply_lora(load_causal_lm(tiny_model_dir), lora).eval()
    assert all("lora_" in n for n, p in resumed.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.allclose(sequence_logps(resumed, _batch())["logps"], sequence_logps(trained, _batch())["logps"])


def test_missing_target_modules_fail_before_loading(tiny_model_dir):
    from framework.model.lora import check_lora

    with pytest.raises(UserError, match=r"model.lora.target_modules=\['attn_qkv'\]: .*not found"):
        check_lora(tiny_model_dir, LoraConfig(r=4, target_modules=["attn_qkv"]))


def test_adapter_of_another_base_is_refused(tiny_model_dir, tmp_path):
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path
    from framework.model.loading import load_causal_lm
    from framework.model.lora import apply_lora, check_lora

    other = build_tiny_llama(tmp_path / "wider", demo_tokenizer_path(), hidden_size=32)
    apply_lora(load_causal_lm(str(other)), LoraConfig(r=4)).save_pretrained(tmp_path / "adapter")
    with pytest.raises(UserError, match="does not match model.path=.*has shape"):
        check_lora(tiny_model_dir, LoraConfig(adapter=str(tmp_path / "adapter")))
    (tmp_path / "not_adapter").mkdir()
    with pytest.raises(UserError, match="no adapter_config.json"):
        check_lora(tiny_model_dir, LoraConfig(adapter=str(tmp_path / "not_adapter")))


@pytest.mark.parametrize("override, message", [
    ("model.lora.r=-1", "model.lora.r=-1 must be a whole number >= 0"),
    ("model.lora.r=2.5", "model.lora.r=2.5 must be a whole number"),
    ("model.lora.alpha=0", "model.lora.alpha=0 must be a positive number"),
    ("model.lora.dropout=1.0", r"model.lora.dropout=1.0 must be in \[0, 1\)"),
    ("model.lora.target_modules=5", "model.lora.target_modules=5 must be"),
    ("+model.lora.rank=4", "unknown key model.lora.rank"),
])
def test_bad_lora_config_names_the_key(override, message):
    from tests.conftest import compose

    with pytest.raises(ConfigError, match=message):
        compose([override])


def test_lora_config_reaches_the_run_config():
    from tests.conftest import compose

    cfg = compose(["model.lora.r=8", "model.lora.target_modules=[q_proj,k_proj]"])
    assert cfg.model.uses_lora and cfg.model.lora.r == 8 and cfg.model.lora.target_modules == ["q_proj", "k_proj"]
    assert not compose([]).model.uses_lora
