"""RPS: the neighbourhood of directions (fast) and selection on Ray workers (slow)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framework.cluster.select import neighbour_directions


def _angle(w):
    return math.atan2(w[1], w[0])


def test_directions_start_at_the_request_and_spread_evenly_by_angle():
    v = [0.7, 0.3]
    dirs = neighbour_directions(v, 5, radius=0.2)
    assert dirs[0] == pytest.approx(v)
    assert all(sum(d) == pytest.approx(1.0) and min(d) >= 0 for d in dirs)
    offsets = sorted(_angle(d) - _angle(v) for d in dirs)
    assert offsets == pytest.approx([-0.2, -0.1, 0.0, 0.1, 0.2])


def test_radius_zero_is_the_baseline_and_edges_are_clipped():
    assert neighbour_directions([0.5, 0.5], 3, radius=0.0) == [pytest.approx([0.5, 0.5])] * 3
    edge = neighbour_directions([1.0, 0.0], 3, radius=0.3)  # angles 0, −0.3 (outside the orthant), +0.3
    assert edge[1] == pytest.approx([1.0, 0.0])
    assert _angle(edge[2]) == pytest.approx(0.3)


def test_more_objectives_stay_on_the_simplex_and_at_the_radius():
    v = [0.5, 0.3, 0.2]
    dirs = neighbour_directions(v, 4, radius=0.15, seed=3)
    unit = torch.tensor(v) / torch.tensor(v).norm()
    for d in dirs:
        assert sum(d) == pytest.approx(1.0) and min(d) >= 0
        cos = float(torch.tensor(d) @ unit / torch.tensor(d).norm())
        assert math.acos(min(1.0, cos)) <= 0.15 + 1e-6
    assert dirs == neighbour_directions(v, 4, radius=0.15, seed=3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_select_returns_the_best_candidate_under_the_requested_direction(tmp_path, tiny_model_dir, ray_local):
    from framework.cluster.select import select

    prompts = [("tell me about fruit .", False), ("talk about music please .", False), ("say something on tools .", False)]
    # Any causal LM can read a weights line; the tiny model's checkpoint with a fresh scalar head scores.
    records = select(tiny_model_dir, [tiny_model_dir, tiny_model_dir], ["topic", "brevity"], [3.0, 1.0], prompts,
                     directions=3, radius=0.3, per_direction=2, max_new_tokens=6, num_workers=2)
    assert [r["row"] for r in records] == [0, 1, 2]
    v = torch.tensor([0.75, 0.25], dtype=torch.float64)
    for record in records:
        candidates = record["candidates"]
        assert len(candidates) == 6 and {c["direction"] for c in candidates} == {0, 1, 2}
        utilities = [float(torch.tensor(c["rewards"], dtype=torch.float64) @ v) for c in candidates]
        assert record["utility"] == pytest.approx(max(utilities))
        assert record["selected"] == candidates[utilities.index(max(utilities))]["text"]
    json.dumps(records)  # the JSONL output is plain data


@pytest.mark.parametrize("argv, expect", [
    (["select", "demo", "--scorer", "topic", "--weights", "1", "--prompts", "x", "--out", "o"], "each must be NAME=PATH"),
    (["select", "demo", "--scorer", "a=demo", "--weights", "1,2", "--prompts", "x", "--out", "o"], "need 1 non-negative"),
    (["spa", "--out", "o", "--rounds", "0"], "need rounds >= 1"),
])
def test_cli_rejects_bad_input_in_one_line(argv, expect, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "launch.cli", *argv], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert done.returncode == 2 and expect in done.stderr and "Traceback" not in done.stderr
