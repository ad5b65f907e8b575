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
