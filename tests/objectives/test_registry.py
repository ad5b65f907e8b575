"""The registry and its configs: every objective is registered, configured, and honours the contract."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import framework.objectives as objectives
from framework.objectives import FEEDBACK_KINDS, REQUIREMENTS, SequenceStats, build_objective, objective_class, registered_objectives

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf" / "objective"
ISSUE_NAMES = {
    "dpo", "cdpo", "rdpo", "ipo", "hinge", "slic", "ln_dpo", "simpo", "orpo", "mapo", "dove",
    "lipo_lambda", "listmle", "listnet", "pro_rank",
    "kto", "bco", "d2o",
    "sft", "poft", "bt_reward",
}  # fmt: skip


def test_every_issue_name_is_registered():
    assert ISSUE_NAMES <= set(registered_objectives())


def test_every_module_imports_and_registration_is_by_decorator():
    modules = [m.name for m in pkgutil.iter_modules(objectives.__path__)]
    for name in modules:
        importlib.import_module(f"framework.objectives.{name}")
    for name in registered_objectives():
        cls = objective_class(name)
        assert cls.name == name and cls.feedback in FEEDBACK_KINDS
        assert set(cls.requires) <= set(REQUIREMENTS)


def test_package_imports_torch_only():
    code = "import sys, framework.objectives; print(sorted(m for m in ('ray', 'deepspeed', 'transformers', 'trl', 'pyarrow', 'hydra') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_name_lists_registered_names():
    with pytest.raises(KeyError) as info:
        build_objective("dpoo")
    message = str(info.value)
    assert "dpoo" in message and all(name in message for name in ("dpo", "kto", "lipo_lambda"))


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError, match="registered twice"):
        objectives.register_objective("dpo")(type("Again", (objectives.Objective,), {}))


def _config(name):
    return yaml.safe_load((CONF / f"{name}.yaml").read_text())


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_binds_to_constructor(path):
    config = yaml.safe_load(path.read_text())
    assert config.pop("name") == path.stem
    cls = objective_class(path.stem)
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"}
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    assert set(config) == set(params), f"{path.name}: keys {sorted(config)} vs constructor {sorted(params)}"
    inspect.signature(cls).bind(**config)
    obj = build_objective(path.stem, **config)
    assert obj.hparams() == config


def test_every_registered_objective_has_a_config():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(registered_objectives())


def test_unknown_config_key_fails():
    config = _config("dpo")
    config.pop("name")
    config["betta"] = 0.2
    with pytest.raises(TypeError):
        inspect.signature(objective_class("dpo")).bind(**config)
    with pytest.raises(TypeError):
        build_objective("dpo", **config)


def _random_inputs(obj, batch=4, seed=0):
    """Policy (a leaf with grad), reference and batch annotations fitting the objective's declared needs."""
    gen = torch.Generator().manual_seed(seed)
    k = {"pairwise": 2, "listwise": 4, "binary": 1, "sft": 1, "multi": 2}[obj.feedback]
    if "self_samples" in obj.requires:
        k = 4
    lengths = torch.randint(1, 30, (batch, k), generator=gen).to(torch.float64)
    ref_logps = -torch.rand(batch, k, generator=gen, dtype=torch.float64) * lengths * 3
    logps = (ref_logps + torch.randn(batch, k, generator=gen, dtype=torch.float64)).requires_grad_(True)
    extra = {}
    if "prompt_logps" in obj.requires:
        extra["prompt_logps"] = -torch.rand(batch, k, generator=gen, dtype=torch.float64) * 20
    rewards = torch.randn(batch, k, dtype=torch.float64, generator=gen).requires_grad_(True)
    if "rewards" in obj.requires:
        extra["rewards"] = rewards
    policy = SequenceStats(logps, lengths, **extra)
    reference = SequenceStats(ref_logps, lengths, **{key: v.detach() - 1.0 for key, v in extra.items()})
    data = {"scores": torch.rand(batch, k, generator=gen, dtype=torch.float64), "labels": torch.arange(batch) % 2 == 0}
    if obj.feedback == "multi":
        data["objective_scores"] = torch.randn(batch, k, 2, generator=gen, dtype=torch.float64)
    if "mismatched" in obj.requires:
        data["mismatched_policy"] = SequenceStats(ref_logps[:, :1] + 0.5, lengths[:, :1])
        data["mismatched_reference"] = SequenceStats(ref_logps[:, :1], lengths[:, :1])
    if "prompt_weights" in obj.requires:
        data["prompt_weights"] = torch.softmax(torch.randn(batch, 2, generator=gen, dtype=torch.float64), -1)
    if "aligned_logps" in obj.requires:
        data["aligned_logps"] = -torch.rand(batch, 3, generator=gen, dtype=torch.float64) * 3
    leaf = rewards if "rewards" in obj.requires else logps
    return policy, (reference if obj.needs_reference else None), data, leaf


@pytest.mark.parametrize("name", registered_objectives())
def test_contract_on_random_inputs(name):
    obj = build_objective(name, **{k: v for k, v in _config(name).items() if k != "name"})
    policy, reference, data, leaf = _random_inputs(obj)
    out = obj.loss(policy, reference, data)
    assert out.losses.shape == (4,) and out.losses.dtype == torch.float64
    assert torch.isfinite(out.losses).all()
    assert out.metrics and all(isinstance(m, torch.Tensor) and not m.requires_grad for m in out.metrics.values())
    assert all(m.dim() == 0 or m.shape == (4,) for m in out.metrics.values())
    (grad,) = torch.autograd.grad(out.losses.mean(), leaf)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", registered_objectives())
def test_losses_are_per_example(name):
    """Example b's loss depends on example b only (no mixing across the batch), except through the
    cross-example statistics the math defines (KTO's z₀, BCO's δ, SFT's token normaliser), which are detached."""
    obj = build_objective(name, **{k: v for k, v in _config(name).items() if k != "name"})
    policy, reference, data, leaf = _random_inputs(obj)
    out = obj.loss(policy, reference, data)
    jac = torch.stack([torch.autograd.grad(out.losses[b], leaf, retain_graph=True)[0].abs().sum(1) for b in range(4)])
    off_diagonal = jac - torch.diag(torch.diagonal(jac))
    assert off_diagonal.abs().max() == 0
