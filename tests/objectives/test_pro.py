"""Preference Orchestrator (OBJECTIVES.md §5.4): adapter targets, per-prompt weighting, weights-in-context format."""

from __future__ import annotations

import math

import pytest
import torch

from framework.model.orchestrator import context_prompt_ids, round_weights, weights_line
from framework.objectives import build_objective
from framework.objectives.pro import orchestrator_targets, preferred_index, weight_entropy
from tests.objectives.helpers import DTYPE, random_stats


def test_equal_normalised_rewards_give_uniform_targets():
    # Objective 1 is on another scale; after the z-score both sit at +1 std: uniform.
    mean, std = torch.tensor([0.0, 10.0], dtype=DTYPE), torch.tensor([1.0, 5.0], dtype=DTYPE)
    preferred = torch.tensor([[1.0, 15.0], [-2.0, 0.0]], dtype=DTYPE)
    targets = orchestrator_targets(preferred, mean, std, temperature=0.1)
    assert torch.allclose(targets, torch.full((2, 2), 0.5, dtype=DTYPE))


def test_low_temperature_gives_the_argmax_one_hot():
    gen = torch.Generator().manual_seed(0)
    preferred = torch.randn(20, 4, dtype=DTYPE, generator=gen)
    mean, std = torch.zeros(4, dtype=DTYPE), torch.ones(4, dtype=DTYPE)
    targets = orchestrator_targets(preferred, mean, std, temperature=1e-4)
    one_hot = torch.nn.functional.one_hot(preferred.argmax(-1), 4).to(DTYPE)
    assert torch.allclose(targets, one_hot, atol=1e-8)
    soft = orchestrator_targets(preferred, mean, std, temperature=1.0)
    assert torch.allclose(soft.sum(-1), torch.ones(20, dtype=DTYPE)) and (soft.max(-1).values < 1 - 1e-3).all()


def test_targets_do_not_depend_on_an_objectives_scale_or_offset():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(50, 2, dtype=DTYPE, generator=gen)
    rescaled = scores * torch.tensor([1.0, 100.0], dtype=DTYPE) + torch.tensor([0.0, -7.0], dtype=DTYPE)

    def targets(s):
        return orchestrator_targets(s, s.mean(0), s.std(0), 0.1)

    assert torch.allclose(targets(scores), targets(rescaled))


def test_preferred_response_is_the_overall_label_else_the_best_mean_z_score():
    scores = torch.tensor([[[1.0, 0.0], [0.0, 5.0]], [[3.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]], dtype=DTYPE)
    overall = torch.tensor([[0.0, 1.0], [float("nan")] * 2, [1.0, 1.0]], dtype=DTYPE)  # label, none, a tie
    mean, std = torch.zeros(2, dtype=DTYPE), torch.ones(2, dtype=DTYPE)
    assert preferred_index(scores, overall, mean, std).tolist() == [1, 0, 1]
    assert preferred_index(scores, None, mean, std).tolist() == [1, 0, 1]


def test_constant_adapter_weights_reduce_to_the_fixed_weight_baseline():
    policy, reference = random_stats(6, 2, seed=3)
    scores = torch.randn(6, 2, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    w = [0.7, 0.3]
    pro = build_objective("pro").loss(policy, reference, {"objective_scores": scores,
                                                           "prompt_weights": torch.tensor([w] * 6, dtype=DTYPE)})
    fixed = build_objective("weighted_sum", weights=w).loss(policy, reference, {"objective_scores": scores})
    assert torch.allclose(pro.losses, fixed.losses)
    (g_pro,) = torch.autograd.grad(pro.losses.sum(), policy.logps)
    (g_fixed,) = torch.autograd.grad(fixed.losses.sum(), policy.logps)
    assert torch.allclose(g_pro, g_fixed)


def test_per_prompt_weights_weigh_each_example_by_its_own_vector():
    policy, reference = random_stats(4, 2, seed=5)
    scores = torch.randn(4, 2, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(6))
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]], dtype=DTYPE)
    out = build_objective("pro").loss(policy, reference, {"objective_scores": scores, "prompt_weights": weights})
    for i in range(4):
        one = build_objective("weighted_sum", weights=weights[i].tolist()).loss(policy, reference, {"objective_scores": scores})
        assert torch.allclose(out.losses[i], one.losses[i])
    assert torch.allclose(out.metrics["pro/weight_entropy"][:2], torch.zeros(2, dtype=DTYPE))
    assert math.isclose(float(out.metrics["pro/weight_entropy"][2]), math.log(2))


def test_prompt_weights_of_the_wrong_shape_are_refused():
    policy, reference = random_stats(3, 2, seed=7)
    scores = torch.randn(3, 2, 2, dtype=DTYPE)
    with pytest.raises(ValueError, match="prompt_weights must be"):
        build_objective("pro").loss(policy, reference, {"objective_scores": scores, "prompt_weights": torch.ones(3, 3)})
    with pytest.raises(KeyError, match="prompt_weights"):
        build_objective("pro").loss(policy, reference, {"objective_scores": scores})


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"adapter_epochs": 0}, {"adapter_lr": -1.0}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError):
        build_objective("pro", **bad)


def test_in_context_needs_a_live_reference():
    assert build_objective("pro").live_reference_inputs() == ["context_prompts"]
    assert build_objective("pro", in_context=False).live_reference_inputs() == []


def test_weight_entropy_bounds():
    w = torch.softmax(torch.randn(30, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(8)), -1)
    h = weight_entropy(w)
    assert (h >= 0).all() and (h <= math.log(3) + 1e-12).all()


@pytest.mark.parametrize("weights", [[1 / 3, 1 / 3, 1 / 3], [0.705, 0.295], [0.0, 1.0], [0.126, 0.437, 0.437]])
def test_rounded_weights_sum_to_one_and_print_in_the_documented_format(weights):
    rounded = round_weights(weights)
    assert math.isclose(sum(rounded), 1.0) and all(abs(r - w) <= 0.011 for r, w in zip(rounded, weights))
    names = [f"o{i}" for i in range(len(weights))]
    line = weights_line(names, rounded)
    assert line.startswith("[weights o0=") and line.endswith("]\n")
    assert [float(part.split("=")[1]) for part in line[len("[weights "):-2].split()] == rounded


def test_context_ids_keep_the_weights_line_when_the_prompt_is_truncated():
    from framework.model.demo import demo_tokenizer_path
    from framework.store.tokenize import load_tokenizer

    tok = load_tokenizer(demo_tokenizer_path())
    line = tok(weights_line(["a", "b"], [0.7, 0.3]), add_special_tokens=False)["input_ids"]
    prompt = [tok.bos_token_id] + tok("tell me about cats and dogs and birds .", add_special_tokens=False)["input_ids"]
    full = context_prompt_ids(tok, ["a", "b"], [0.7, 0.3], prompt)
    assert full == [tok.bos_token_id] + line + prompt[1:]
    cut = context_prompt_ids(tok, ["a", "b"], [0.7, 0.3], prompt, max_prompt_length=len(line) + 4)
    assert cut == [tok.bos_token_id] + line + prompt[-3:] and len(cut) == len(line) + 4
