"""The metrics plot: drawn from metrics.jsonl, replayed steps deduplicated, empty input tolerated."""

import json

from framework.plots import plot_metrics


def test_plot_written_from_metrics(tmp_path):
    lines = [{"step": 0, "eval/policy_accuracy@start": 0.5}]
    lines += [{"step": s, "loss": 1.0 / s, "rewards/accuracy": 0.5, "logps/chosen": -s, "tokens_per_s": 100.0} for s in range(1, 6)]
    lines += [{"event": "restored", "step": 3}, {"step": 4, "loss": 0.2, "tokens_per_s": 90.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = plot_metrics(tmp_path / "metrics.jsonl", title="t")
    assert out == tmp_path / "metrics.png" and out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_steps_no_plot(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/x": 1.0}) + "\n")
    assert plot_metrics(tmp_path / "metrics.jsonl") is None


def test_multi_objective_runs_get_accuracy_and_coefficient_panels():
    from framework.plots import _multi_objective_panels, _running_mean

    keys = ["loss", "rewards/accuracy", "eval/policy_accuracy", "topic/accuracy", "brevity/accuracy", "topic/loss",
            "mo/coef/topic", "mo/coef/brevity", "mo/cos/topic-brevity"]
    panels = dict(_multi_objective_panels(keys))
    assert panels == {"objective accuracy (10-step mean)": ["brevity/accuracy", "topic/accuracy"],
                      "gradient coefficients": ["mo/coef/brevity", "mo/coef/topic"]}
    assert _multi_objective_panels(["loss", "rewards/accuracy"]) == []
    pro = dict(_multi_objective_panels(["loss", "topic/accuracy", "pro/weight/topic", "pro/weight/brevity", "pro/weight_entropy"]))
    assert pro["PRO prompt weights (batch mean) and entropy"] == ["pro/weight/brevity", "pro/weight/topic", "pro/weight_entropy"]
    assert _running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
