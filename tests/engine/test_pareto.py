"""`alignray bench pareto`: front/hypervolume math on hand-made points, per-objective held-out evaluation on a real
tiny model (one process, no Ray), and a small end-to-end run of the benchmark through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.pareto import coverage, dominates, hypervolume, non_dominated, plan, weight_grid
from tests.conftest import REPO


# -- fronts ------------------------------------------------------------------------------------------------
def test_non_dominated_drops_dominated_and_duplicate_points():
    points = [(0.2, 0.9), (0.5, 0.5), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.3), (0.2, 0.8)]
    assert non_dominated(points) == [(0.2, 0.9), (0.5, 0.5), (0.9, 0.1)]
    assert dominates((0.5, 0.5), (0.5, 0.3)) and not dominates((0.5, 0.5), (0.5, 0.5))


def test_hypervolume_2d_known_answers():
    assert hypervolume([(0.5, 0.5)], (0.0, 0.0)) == pytest.approx(0.25)
    # Staircase: 0.2·0.9 + (0.5−0.2)·0.5 + (0.9−0.5)·0.1 = 0.37; dominated and duplicate points add nothing.
    front = [(0.2, 0.9), (0.5, 0.5), (0.9, 0.1)]
    assert hypervolume(front, (0.0, 0.0)) == pytest.approx(0.37)
    assert hypervolume(front + [(0.5, 0.5), (0.4, 0.4), (0.1, 0.1)], (0.0, 0.0)) == pytest.approx(0.37)
    # Reference point (0.3, 0.2): (0.2, 0.9) and (0.9, 0.1) do not dominate it; (0.5, 0.5) gives 0.2·0.3.
    assert hypervolume(front, (0.3, 0.2)) == pytest.approx(0.06)
    assert hypervolume([], (0.0, 0.0)) == 0.0


def test_hypervolume_3d_inclusion_exclusion():
    a, b = (1.0, 0.5, 0.5), (0.5, 1.0, 1.0)
    overlap = 0.5 * 0.5 * 0.5  # the box (min of each coordinate)
    assert hypervolume([a, b], (0.0, 0.0, 0.0)) == pytest.approx(0.25 + 0.5 - overlap)


def test_coverage_and_weight_grid():
    assert coverage([(0.6, 0.6)], [(0.5, 0.5), (0.9, 0.1)]) == 0.5
    assert coverage([(0.5, 0.5)], [(0.5, 0.5)]) == 1.0  # weak dominance: a shared point is covered
    assert weight_grid(5, 2) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    assert len(weight_grid(3, 3)) == 6 and all(sum(w) == pytest.approx(1.0) for w in weight_grid(3, 3))


def test_plan_modpo_targets_the_heavier_objective_and_skips_unregistered(monkeypatch, caplog):
    from benchmarks import pareto

    monkeypatch.setitem(pareto.METHODS, "nope", pareto.Method("no_such_objective", None))
    runs = plan(["modpo", "nope"], [(0.0, 1.0), (0.5, 0.5)])
    assert [r["overrides"] for r in runs] == [
        ["objective=modpo", "train.export=false", "objective.weights=[0,1]", "objective.target=1"],
        ["objective=modpo", "train.export=false", "objective.weights=[0.5,0.5]", "objective.target=0"]]
    assert "skipping nope" in caplog.text


# -- per-objective held-out evaluation ---------------------------------------------------------------------
class OneRank:
    """The seam's collective surface for a single process (world size 1)."""

    device = torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def _batch(pad_id: int, seed: int, objective_scores, overall=None, weights=None):
    from framework.engine.batches import MicroBatch
    from framework.model.batching import collate

    g = torch.Generator().manual_seed(seed)
    rows = len(objective_scores)
    prompts = [torch.randint(5, 200, (4,), generator=g).tolist() for _ in range(rows)]
    responses = [[torch.randint(5, 200, (n,), generator=g).tolist() for n in (5, 3)] for _ in range(rows)]
    annotations = {"objective_scores": torch.tensor(objective_scores, dtype=torch.float64),
                   "objective_names": ["topic", "brevity"]}
    if overall is not None:
        annotations["overall_scores"] = torch.tensor(overall, dtype=torch.float64)
    w = torch.tensor(weights or [1.0] * rows)
    return MicroBatch(collate(prompts, responses, pad_id=pad_id), annotations, w)


def test_evaluate_pairs_reports_each_objective_and_the_overall_label(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from framework.engine.step import evaluate_pairs, stats
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path, demo_tokenizer_path(), seed=1),
                                                     dtype=torch.float32).eval()
    pad = AutoTokenizer.from_pretrained(tiny_model_dir).pad_token_id
    # Row 2 ties on brevity (left out of its accuracy), row 3 is padding (weight 0) and counts nowhere.
    scores = [[[3, -5], [1, -3]], [[0, -2], [2, -6]], [[4, -4], [1, -4]], [[1, -1], [0, -9]]]
    batches = [_batch(pad, 0, scores, overall=[[1, 0], [0, 1], [1, 0], [1, 0]], weights=[1, 1, 1, 0]),
               _batch(pad, 1, scores[:3], overall=[[0, 1], [1, 0], [1, 1]])]
    out = evaluate_pairs(OneRank(), policy, reference, batches)

    def expected(signs_per_batch, key):
        hits = total = 0
        for mb, signs in zip(batches, signs_per_batch):
            with torch.no_grad():
                pol, ref = stats(policy, mb.tokens).logps, stats(reference, mb.tokens).logps
            margin = (pol[:, 0] - pol[:, 1]) if key == "policy" else (pol - ref)[:, 0] - (pol - ref)[:, 1]
            for s, m, w in zip(signs, margin.tolist(), mb.weights.tolist()):
                if s and w:
                    total, hits = total + 1, hits + (s * m > 0)
        return hits / total, total

    cases = {"": [[1, 1, 1, 1], [1, 1, 1]], "topic/": [[1, -1, 1, 1], [1, -1, 1]],
             "brevity/": [[-1, 1, 0, 1], [-1, 1, 0]], "overall/": [[1, -1, 1, 1], [-1, 1, 0]]}
    for prefix, signs in cases.items():
        for key in ("policy", "reward"):
            accuracy, pairs = expected(signs, key)
            assert out[f"eval/{prefix}{key}_accuracy"] == pytest.approx(accuracy), prefix + key
        assert out[f"eval/{prefix}pairs"] == pairs
    assert out["eval/pairs"] == 6 and out["eval/brevity/pairs"] == 4 and out["eval/overall/pairs"] == 5


def test_evaluate_pairs_without_overall_label_or_objectives(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from framework.engine.step import evaluate_pairs

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    pad = AutoTokenizer.from_pretrained(tiny_model_dir).pad_token_id
    multi = _batch(pad, 0, [[[1, 0], [0, 1]], [[0, 1], [1, 0]]])
    out = evaluate_pairs(OneRank(), policy, policy, [multi])
    assert "eval/topic/reward_accuracy" in out and not any(k.startswith("eval/overall/") for k in out)
    assert out["eval/topic/reward_accuracy"] == 0.0  # policy == reference: ρ margins are 0, never > 0
    pairwise = multi.__class__(multi.tokens, {"mask": multi.tokens.valid}, multi.weights)
    assert sorted(evaluate_pairs(OneRank(), policy, None, [pairwise])) == ["eval/pairs", "eval/policy_accuracy",
                                                                           "eval/policy_accuracy_mean", "eval/policy_margin"]


# -- the benchmark end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_pareto_smoke(tmp_path, tiny_model_dir):
    """`alignray bench pareto` through the CLI: two weighted-sum runs and one PRO run of 5 steps, PRO's policy
    re-scored with each grid weight vector in its prompts; JSON and PNG written."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "launch.cli", "bench", "pareto", "--methods", "weighted_sum,pro", "--grid", "2",
           "--steps", "5", "--out", str(tmp_path), f"model.path={tiny_model_dir}", "train.micro_batch_size=4"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = list(tmp_path.glob("pareto-*.json"))
    record = json.loads(result.read_text())
    assert {"config", "runs", "fronts", "verdicts", "environment", "png"} <= set(record)
    assert record["config"]["objectives"] == ["topic", "brevity"]
    assert [(r["method"], r["weights"]) for r in record["runs"]] == [
        ("weighted_sum", [1.0, 0.0]), ("weighted_sum", [0.0, 1.0]), ("pro", None),
        ("pro_in_context", [1.0, 0.0]), ("pro_in_context", [0.0, 1.0])]
    for run in record["runs"]:
        assert run.get("steps", 5) == 5
        for name in ("topic", "brevity", "overall"):
            assert 0.0 <= run["eval"][f"eval/{name}/reward_accuracy"] <= 1.0
    front = record["fronts"]["weighted_sum"]
    assert len(front["points"]) == 2 and 0.0 <= front["hypervolume"] <= 1.0
    verdicts = record["verdicts"]
    assert set(verdicts["pro_in_context_follows_weights"]) == {"topic", "brevity"}
    assert "pro_beats_best_fixed" in verdicts["pro_vs_best_fixed_weights"]
    assert os.path.getsize(record["png"]) > 1000 and record["png"].startswith(str(tmp_path))


def test_user_data_is_split_into_train_and_held_out(tmp_path):
    """PKU-SafeRLHF-shaped rows: objectives named from the `<name>_response_id` columns, a seeded 10% held out."""
    from benchmarks.pareto import prepare_data

    rows = [{"prompt": f"question {i} ?", "response_0": f"answer a{i} .", "response_1": f"answer b{i} .",
             "better_response_id": i % 2, "safer_response_id": 1 - i % 2} for i in range(20)]
    source = tmp_path / "pku.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = prepare_data(tmp_path / "out", str(source), None)
    assert data["objectives"] == ["better", "safer"]
    train, held_out = (open(data[k]).read().splitlines() for k in ("train", "eval"))
    assert len(held_out) == 2 and len(train) == 18 and sorted(train + held_out) == sorted(map(json.dumps, rows))
