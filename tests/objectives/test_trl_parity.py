"""Parity with TRL 1.16: the same per-sequence log-probs through TRL's own loss code and through ours.

TRL computes its losses inside `DPOTrainer._compute_loss` / `KTOTrainer._compute_loss`, which also run the
model. We call those real (unbound) methods on a minimal object carrying the attributes they read, with a
real `accelerate.Accelerator` on CPU, and a lookup "model" whose per-token log-probs put each sequence's
chosen total on its first completion position (TRL sums per-token log-probs over the sequence). Reference
log-probs go through TRL's precomputed-reference path. Nothing in TRL's loss arithmetic is replaced.
"""

from __future__ import annotations

import collections
import os
import types

import pytest
import torch

from framework.objectives import SequenceStats, build_objective

os.environ.setdefault("HF_HUB_OFFLINE", "1")
trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer", reason="TRL is a test dependency (pip install -e '.[test]')")
trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
accelerate = pytest.importorskip("accelerate")

DTYPE = torch.float64
WIDTH = 8  # tokens per row: position 0 is the prompt (the row's lookup id), then the completion


class LookupModel(torch.nn.Module):
    """Returns, for each row, the per-token log-probs TRL reads: the total of sequence `input_ids[:, 0]` at
    the first position and zeros after it (zeros also for entropy / logits statistics TRL only logs)."""

    def __init__(self, totals: torch.Tensor) -> None:
        super().__init__()
        self.totals = totals

    def forward(self, input_ids, labels=None, **kwargs):
        log_probs = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=DTYPE)
        log_probs[:, 0] = self.totals[input_ids[:, 0]]
        zeros = torch.zeros_like(log_probs)
        return types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _rows(ids: torch.Tensor, lengths: torch.Tensor):
    """input_ids, attention_mask, completion_mask for rows whose id is `ids` and completion has `lengths` tokens."""
    input_ids = torch.zeros(len(ids), WIDTH, dtype=torch.long)
    input_ids[:, 0] = ids
    positions = torch.arange(WIDTH).unsqueeze(0)
    completion = ((positions >= 1) & (positions <= lengths.unsqueeze(1))).long()
    return input_ids, torch.ones_like(input_ids), completion


def _trainer_stub(model, **attributes):
    model.train()
    return types.SimpleNamespace(
        model=model,
        accelerator=accelerate.Accelerator(cpu=True),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        **attributes,
    )


def trl_dpo_loss(policy: SequenceStats, reference: SequenceStats, loss_type: str, beta: float, label_smoothing: float = 0.0) -> float:
    """TRL's DPO loss (mean over the batch) for pairs given as [B, 2] per-sequence statistics."""
    batch = policy.logps.shape[0]
    totals = torch.cat([policy.logps[:, 0], policy.logps[:, 1]])  # TRL's layout: all chosen, then all rejected
    lengths = torch.cat([policy.lengths[:, 0], policy.lengths[:, 1]]).long()
    input_ids, attention_mask, completion_mask = _rows(torch.arange(2 * batch), lengths)
    model = LookupModel(totals.detach())
    stub = _trainer_stub(
        model,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "ref_chosen_logps": reference.logps[:, 0],
        "ref_rejected_logps": reference.logps[:, 1],
    }
    return float(trl_dpo.DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False))


def _pairs(seed: int, batch: int = 6):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, WIDTH, (batch, 2), generator=gen).to(DTYPE)
    reference = -torch.rand(batch, 2, generator=gen, dtype=DTYPE) * lengths * 2
    policy = reference + torch.randn(batch, 2, generator=gen, dtype=DTYPE) * 4
    return SequenceStats(policy, lengths), SequenceStats(reference, lengths)


CASES = [
    ("sigmoid", "dpo", {"beta": 0.1}),
    ("sigmoid", "dpo", {"beta": 0.7}),
    ("robust", "rdpo", {"beta": 0.1, "label_smoothing": 0.2}),
    ("ipo", "ipo", {"beta": 0.1}),
    ("ipo", "ipo", {"beta": 0.5}),
    ("hinge", "hinge", {"beta": 0.3}),
    ("sigmoid_norm", "ln_dpo", {"beta": 2.0}),
]


@pytest.mark.parametrize("loss_type,name,hparams", CASES)
def test_dpo_family_matches_trl_per_example_and_batch(loss_type, name, hparams):
    policy, reference = _pairs(seed=len(name) + int(10 * hparams["beta"]))
    ours = build_objective(name, **hparams).loss(policy, reference, {}).losses
    trl_kwargs = {"beta": hparams["beta"], "label_smoothing": hparams.get("label_smoothing", 0.0)}
    for b in range(len(ours)):
        one = slice(b, b + 1)
        theirs = trl_dpo_loss(SequenceStats(policy.logps[one], policy.lengths[one]), SequenceStats(reference.logps[one], reference.lengths[one]), loss_type, **trl_kwargs)
        assert float(ours[b]) == pytest.approx(theirs, abs=1e-5, rel=1e-5), (b, float(ours[b]), theirs)
    assert float(ours.mean()) == pytest.approx(trl_dpo_loss(policy, reference, loss_type, **trl_kwargs), abs=1e-5, rel=1e-5)
    assert (ours != ours[0]).any()  # the cases are not degenerate


def test_hinge_parity_covers_both_sides_of_the_hinge():
    policy, reference = _pairs(seed=3, batch=8)
    losses = build_objective("hinge", beta=0.3).loss(policy, reference, {}).losses
    assert (losses == 0).any() and (losses > 0).any()
    assert float(losses.mean()) == pytest.approx(trl_dpo_loss(policy, reference, "hinge", beta=0.3), abs=1e-5)


def test_bco_with_zero_shift_and_unit_weights_sums_to_trl_bco_pair():
    policy, reference = _pairs(seed=4)
    beta = 0.2
    rho = policy.logps - reference.logps
    reference = SequenceStats(reference.logps + rho.mean(), reference.lengths)  # centre: batch-mean reward 0 ⇒ δ = 0
    flat = lambda s: SequenceStats(s.logps.reshape(-1, 1), s.lengths.reshape(-1, 1))  # noqa: E731  [w0, l0, w1, l1, …]
    labels = torch.tensor([True, False] * policy.logps.shape[0])
    bco = build_objective("bco", beta=beta)
    ours = bco.loss(flat(policy), flat(reference), {"labels": labels}).losses.reshape(-1, 2).sum(1)
    assert abs(bco.delta) < 1e-12
    for b in range(len(ours)):
        one = slice(b, b + 1)
        theirs = trl_dpo_loss(SequenceStats(policy.logps[one], policy.lengths[one]), SequenceStats(reference.logps[one], reference.lengths[one]), "bco_pair", beta)
        assert float(ours[b]) == pytest.approx(theirs, abs=1e-5)


def trl_kto_loss(policy, reference, mismatched_policy, mismatched_reference, labels, beta, desirable_weight, undesirable_weight):
    """TRL's KTO loss (nanmean over the batch) and its logged `kl`, for [B, 1] statistics."""
    batch = len(labels)
    totals = torch.cat([policy.logps[:, 0], mismatched_policy.logps[:, 0]]).detach()
    input_ids, attention_mask, completion_mask = _rows(torch.arange(batch), policy.lengths[:, 0].long())
    kl_ids, kl_attention, kl_completion = _rows(torch.arange(batch, 2 * batch), mismatched_policy.lengths[:, 0].long())
    model = LookupModel(totals)
    stub = _trainer_stub(
        model, calculate_KL=True, loss_type="kto", beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight
    )
    stub._compute_kl_logps = types.MethodType(trl_kto.KTOTrainer._compute_kl_logps, stub)  # TRL's own helper
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": kl_attention,
        "KL_completion_mask": kl_completion,
        "label": labels,
        "ref_logps": reference.logps[:, 0],
        "ref_KL_logps": mismatched_reference.logps[:, 0],
    }
    loss = trl_kto.KTOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return float(loss), stub._metrics["train"]["kl"][-1]


@pytest.mark.parametrize("seed,labels,shift", [(0, [True, False, True, True, False, False], 0.0), (1, [True] * 5, 0.0), (2, [False, True, False, False], 3.0), (3, [True, False, False], -3.0)])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_kto_matches_trl(seed, labels, shift, weights):
    batch = len(labels)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, WIDTH, (batch, 1), generator=gen).to(DTYPE)

    def pair(offset):
        ref = -torch.rand(batch, 1, generator=gen, dtype=DTYPE) * 10
        return SequenceStats(ref + offset + torch.randn(batch, 1, generator=gen, dtype=DTYPE) * 2, lengths), SequenceStats(ref, lengths)

    policy, reference = pair(0.0)
    mismatched_policy, mismatched_reference = pair(shift)  # shift > 0 exercises z₀ > 0, < 0 the clamp
    label_tensor = torch.tensor(labels)
    obj = build_objective("kto", beta=0.3, desirable_weight=weights[0], undesirable_weight=weights[1])
    out = obj.loss(policy, reference, {"labels": label_tensor, "mismatched_policy": mismatched_policy, "mismatched_reference": mismatched_reference})
    theirs, kl = trl_kto_loss(policy, reference, mismatched_policy, mismatched_reference, label_tensor, 0.3, *weights)
    assert float(out.losses.mean()) == pytest.approx(theirs, abs=1e-5)
    assert float(out.metrics["kl"]) == pytest.approx(kl, abs=1e-5)


def test_trl_sigmoid_ignores_label_smoothing_so_cdpo_is_its_own_objective():
    policy, reference = _pairs(seed=5)
    theirs_smoothed = trl_dpo_loss(policy, reference, "sigmoid", beta=0.1, label_smoothing=0.2)
    assert theirs_smoothed == pytest.approx(trl_dpo_loss(policy, reference, "sigmoid", beta=0.1), abs=1e-12)
    cdpo = build_objective("cdpo", beta=0.1, label_smoothing=0.2).loss(policy, reference, {}).losses.mean()
    assert abs(float(cdpo) - theirs_smoothed) > 1e-3
