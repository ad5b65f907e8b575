"""The ZeRO memory benchmark's arithmetic, and the scenario names of `alignray bench`."""

import importlib

import pytest

from benchmarks.zero_memory import largest_rank, ratios
from launch.bench import SCENARIOS


def test_largest_rank_is_the_one_with_most_model_state():
    memory = [{"weights_mib": 10, "gradients_mib": 5, "optimizer_mib": 10, "peak_rss_mib": 900},
              {"weights_mib": 10, "gradients_mib": 6, "optimizer_mib": 10, "peak_rss_mib": 800}]
    assert largest_rank(memory) == {"weights_mib": 10, "gradients_mib": 6, "optimizer_mib": 10, "peak_rss_mib": 800}


def test_ratios_over_zero0():
    zero0 = {"weights_mib": 100.0, "gradients_mib": 50.0, "optimizer_mib": 100.0, "peak_rss_mib": 800.0}
    zero3 = {"weights_mib": 50.0, "gradients_mib": 25.0, "optimizer_mib": 60.0, "peak_rss_mib": 600.0}
    out = ratios({0: zero0, 3: zero3})
    assert out["zero0"] == {"weights_optimizer": 1.0, "weights_gradients_optimizer": 1.0, "peak_rss": 1.0}
    assert out["zero3"] == {"weights_optimizer": 0.55, "weights_gradients_optimizer": 0.54, "peak_rss": 0.75}


@pytest.mark.parametrize("scenario, module", [("memory", "benchmarks.zero_memory"), ("context", "benchmarks.memory"),
                                              ("listwise", "benchmarks.listwise"), ("mfu", "benchmarks.mfu")])
def test_scenarios_name_their_modules(scenario, module):
    assert SCENARIOS[scenario][0] == module
    assert callable(importlib.import_module(module).main)


@pytest.mark.slow
def test_zero2_run_reports_partitioned_gradients(tmp_path, tiny_model_dir, ray_local):
    """2 ranks, ZeRO-2, live reference: each rank holds both full models and half of the policy's gradient."""
    from benchmarks.zero_memory import run_stage

    common = ["objective=dpo", "train.max_steps=1", "train.warmup_steps=0", "train.micro_batch_size=2",
              "train.eval_at_start=false", "train.eval_at_end=false", "train.export=false", "data.demo_train_rows=8",
              "data.demo_eval_rows=4", "cluster.num_workers=2", "cluster.cpus_per_worker=1"]
    run = run_stage(2, tiny_model_dir, tmp_path, common)
    assert len(run["per_rank"]) == 2
    for memory in run["per_rank"]:
        policy = memory["weights_mib"] / 2  # fp32 policy and reference, unpartitioned under ZeRO-2
        assert memory["gradients_mib"] == pytest.approx(policy / 2, rel=0.2)
        assert memory["optimizer_mib"] == pytest.approx(3 * policy / 2, rel=0.2)  # master + 2 moments, halved
