"""`train.eval_every=N`: the held-out evaluation runs every N steps of a real run (2 Ray Train workers, ZeRO-2),
its figures land in metrics.jsonl, and the run summary shows ranking accuracy before/after and the idealized one."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose

pytestmark = pytest.mark.slow


def test_eval_every_reports_held_out_figures_during_training(tmp_path, tiny_model_dir, ray_local):
    from framework.run import format_summary, train

    out = tmp_path / "run"
    summary = train(compose(["data.demo_train_rows=24", "data.demo_eval_rows=16", "train.micro_batch_size=4",
                             "train.max_steps=5", "train.warmup_steps=0", "train.eval_every=2", "cluster.num_workers=2",
                             f"model.path={tiny_model_dir}", f"output_dir={out}", "train.export=false"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in rows if "eval/policy_accuracy" in r]
    assert evaluated == [2, 4, 5]  # every 2 steps, and the end (eval_at_end)
    start = next(r for r in rows if "eval/policy_accuracy@start" in r)
    # at step 0 the policy is the reference: implicit rewards are all 0, the idealized accuracy is already defined
    assert start["eval/reward_accuracy@start"] == 0.0 and 0 <= start["eval/idealized_accuracy@start"] <= 1
    step2 = next(r for r in rows if r["step"] == 2 and "loss" in r)
    assert {"eval/policy_accuracy_mean", "eval/reward_accuracy", "eval/idealized_accuracy"} <= set(step2)
    assert step2["eval/idealized_accuracy"] == start["eval/idealized_accuracy@start"]  # reference and data only
    text = format_summary(summary)
    assert summary["eval_idealized_accuracy"] == start["eval/idealized_accuracy@start"]
    assert "idealized ranking accuracy" in text and "per-token mean log-probs" in text and " before -> " in text
