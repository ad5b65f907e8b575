"""`alignray eval` end to end through the real CLI (embedded Ray, 2 workers): pairwise, ranked, binary and
multi-objective data in one call, a reference and a reward-model judge → eval.json, report.md and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _judge(tmp: Path, tiny: str) -> str:
    """What a `bt_reward` export is: a sequence-classification model with one scalar output, and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(tiny)
    config.num_labels, config.pad_token_id = 1, AutoTokenizer.from_pretrained(tiny).pad_token_id
    torch.manual_seed(3)
    LlamaForSequenceClassification(config).save_pretrained(tmp / "judge")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp / "judge")
    return str(tmp / "judge")


def test_eval_writes_every_figure_and_the_report(tmp_path, tiny_model_dir):
    from framework import demo_data
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    policy = str(build_tiny_llama(tmp_path / "policy", demo_tokenizer_path(), seed=1))
    data = [demo_data.write_jsonl(make(n, seed=4), tmp_path / f"{name}.jsonl") for name, make, n in
            (("pairs", demo_data.pairs, 16), ("ranked", demo_data.ranked, 4), ("binary", demo_data.binary, 8),
             ("multi", demo_data.multi, 8))]
    out = tmp_path / "report"
    argv = ["eval", policy, "--data", *map(str, data), "--reference", tiny_model_dir, "--judge",
            _judge(tmp_path, tiny_model_dir), "--judge-prompts", "4", "--max-new-tokens", "4", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "launch.cli", *argv], capture_output=True, text=True, timeout=300,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((out / "eval.json").read_text())
    # 16 pairs + 4 lists × 6 pairs (distinct scores) + 8 multi rows (their human label) ; binary rows are not pairs
    assert figures["pairs"] == 16 + 24 + 8
    for key in ("ranking_accuracy", "ranking_accuracy_mean", "reward_accuracy", "idealized_ranking_accuracy",
                "mean_margin", "reference_ranking_accuracy", "margin_spread", "ranking_accuracy_ci"):
        assert figures[key] is not None, key
    assert set(figures["objectives"]) == {"topic", "brevity"} and figures["objectives"]["topic"]["pairs"] > 0
    assert figures["listwise"]["lists"] == 4 and -1 <= figures["listwise"]["kendall_tau"] <= 1
    assert figures["binary"]["examples"] == 8 and 0 <= figures["binary"]["reward_auc"] <= 1
    judge = figures["judge"]
    assert judge["prompts"] == 4 and 0 <= judge["win_rate_ci"][0] <= judge["win_rate"] <= judge["win_rate_ci"][1] <= 1
    assert figures["model"]["fingerprint"] and figures["reference"]["path"] == tiny_model_dir
    assert [d["rows"] for d in figures["data"]] == [16, 4, 8, 8] and "torch" in figures["versions"]
    report = (out / "report.md").read_text()
    assert "idealized ranking accuracy" in report and "judge: win rate" in report
    assert {p.name for p in out.glob("*.png")} == {"margins.png", "accuracy_by_length.png", "objectives.png"}
    assert "ranking accuracy (summed log-probs)" in result.stdout and str(out / "report.md") in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []  # no temp dir left
