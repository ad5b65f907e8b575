"""A run is stopped hard (every worker SIGKILLed while it saves step 6, no retries), then
`alignray train resume=auto` continues it from the last committed checkpoint (step 4) to the end.

The resumed run must reproduce the uninterrupted run's losses step for step (weights, optimizer, LR schedule,
sampler position and RNG all restored) and append to metrics.jsonl rather than truncate it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster.fault_helpers import (STEPS, Background, all_ranks_parked, assert_exactly_once, losses_by_step,
                                         metric_rows, park_in_publish, read_ledgers, reference_run, run_train,
                                         storage_runs, wait_for, worker_pids)

pytestmark = pytest.mark.slow
STOP_AT = 6


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, tiny_model_dir, ray_local):
    from framework.cluster.checkpoints import latest_checkpoint

    root = tmp_path_factory.mktemp("resume")
    reference = reference_run(tmp_path_factory.getbasetemp() / "reference", tiny_model_dir)
    output, release = root / "run", root / "release"
    mp = pytest.MonkeyPatch()
    for name, value in park_in_publish(STOP_AT, release).items():
        mp.setenv(name, value)
    try:
        first = Background(lambda: run_train(output, tiny_model_dir, ["cluster.max_failures=0"]))
        wait_for(lambda: all_ranks_parked(release) or not first.alive(), 300, "both ranks inside the save")
        assert first.alive(), first.error
        for pid in worker_pids():
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception):
            first.join(300)
    finally:
        mp.undo()
    stopped = {"rows": metric_rows(output), "latest": latest_checkpoint(str(output / "ray")),
               "staging": [p for run in storage_runs(output) for p in run.iterdir() if p.name.startswith(".staging-")]}
    started = time.time()
    summary = run_train(output, tiny_model_dir, ["resume=auto"])
    return {"output": output, "summary": summary, "stopped": stopped, "reference": reference,
            "resume_wall": time.time() - started}


def test_stopped_run_left_previous_checkpoint_as_latest(resumed):
    from framework.cluster.checkpoints import require_committed

    stopped = resumed["stopped"]
    assert stopped["latest"].endswith(f"checkpoint-{STOP_AT - 2:06d}")
    assert [p.name for p in stopped["staging"]] == [f".staging-checkpoint-{STOP_AT:06d}"]
    with pytest.raises(ValueError, match="never finished"):
        require_committed(str(stopped["staging"][0]))
    assert require_committed(stopped["latest"]) == stopped["latest"]


def test_resume_auto_reproduces_uninterrupted_losses(resumed):
    resumed_losses = losses_by_step(resumed["output"])
    reference = losses_by_step(resumed["reference"]["output"])
    assert sorted(resumed_losses) == list(range(1, STEPS + 1))
    assert reference[STEPS] < reference[1] - 1e-3
    for step in range(STOP_AT - 1, STEPS + 1):  # the steps the resumed run computed
        assert resumed_losses[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    lrs = {int(r["step"]): r["lr"] for r in metric_rows(resumed["output"]) if "lr" in r}
    ref_lrs = {int(r["step"]): r["lr"] for r in metric_rows(resumed["reference"]["output"]) if "lr" in r}
    assert lrs == pytest.approx(ref_lrs)  # the warmup-cosine schedule continued where it stopped


def test_metrics_are_appended_and_resume_is_logged(resumed):
    rows = metric_rows(resumed["output"])
    before = resumed["stopped"]["rows"]
    assert rows[: len(before)] == before  # nothing of the stopped run was truncated
    restored = [r for r in rows[len(before):] if r.get("event") == "restored"]
    assert len(restored) == 1 and restored[0]["step"] == STOP_AT - 2
    assert restored[0]["from"].endswith(f"checkpoint-{STOP_AT - 2:06d}")
    first_step = next(r for r in rows[len(before):] if "loss" in r)
    assert first_step["step"] == STOP_AT - 1
    print(f"\n[timing] resume=auto run: {resumed['resume_wall']:.1f}s wall for {STEPS - STOP_AT + 2} steps, "
          f"restore {restored[0]['restore_seconds']:.2f}s; uninterrupted run "
          f"{resumed['reference']['summary']['wall_time_s']:.1f}s for {STEPS} steps")


def test_resumed_ledger_is_exactly_once(resumed):
    final = Path(resumed["summary"]["checkpoint"])
    assert final.name == f"checkpoint-{STEPS:06d}"
    ledgers = read_ledgers(final)
    assert_exactly_once(ledgers, STEPS)
    assert ledgers == read_ledgers(Path(resumed["reference"]["summary"]["checkpoint"]))
