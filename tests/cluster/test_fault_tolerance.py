"""A worker is SIGKILLed mid-epoch, in the middle of saving a checkpoint; Ray Train restarts the group
(`cluster.max_failures=1`), training resumes from the previous committed checkpoint and finishes.

Checked for real: the half-saved checkpoint is never visible under its final name and `latest_checkpoint()` keeps
returning the previous one, which loads; the ledger shows every sample of every epoch trained exactly once
counting from the restored checkpoint; the losses equal the uninterrupted run's step for step.
"""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

from tests.cluster.fault_helpers import (STEPS, Background, all_ranks_parked, assert_exactly_once, losses_by_step,
                                         metric_rows, park_in_publish, read_ledgers, reference_run, run_train,
                                         storage_runs, wait_for, worker_pids)

pytestmark = pytest.mark.slow
KILL_AT = 8  # parked while publishing step 8: steps 1..8 ran, checkpoint 6 is the last committed one


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, tiny_model_dir, ray_local, monkeypatch_module):
    from framework.cluster.checkpoints import latest_checkpoint
    from framework.engine.seam import consolidated_state_dict

    root = tmp_path_factory.mktemp("fault")
    reference = reference_run(tmp_path_factory.getbasetemp() / "reference", tiny_model_dir)
    output, release = root / "killed", root / "release"
    for name, value in park_in_publish(KILL_AT, release).items():
        monkeypatch_module.setenv(name, value)
    run = Background(lambda: run_train(output, tiny_model_dir, ["cluster.max_failures=1"]))
    wait_for(lambda: all_ranks_parked(release) or not run.alive(), 300, f"both ranks inside the save of step {KILL_AT}")
    assert run.alive(), run.error
    storage = output / "ray"
    seen = {"staging": [p.name for p in storage_runs(output)[0].iterdir() if p.name.startswith(".staging-")],
            "latest": latest_checkpoint(str(storage))}
    victim = worker_pids()[-1]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    # While the group is down: the previous checkpoint is complete and loads.
    weights = consolidated_state_dict(seen["latest"])
    seen["latest_finite"] = all(bool(t.float().isfinite().all()) for t in weights.values())
    wait_for(lambda: any(r.get("event") == "restored" for r in metric_rows(output)), 300, "the restore")
    release.touch()  # the restarted attempt publishes step 8 without parking
    summary = run.join(600)
    return {"output": output, "summary": summary, "seen": seen, "killed_at": killed_at, "victim": victim,
            "reference": reference}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_half_saved_checkpoint_is_invisible_and_previous_one_loads(killed_run):
    seen = killed_run["seen"]
    assert seen["staging"] == [f".staging-checkpoint-{KILL_AT:06d}"]
    assert seen["latest"].endswith(f"checkpoint-{KILL_AT - 2:06d}")
    assert seen["latest_finite"]


def test_run_survives_worker_kill_and_resumes_from_last_checkpoint(killed_run):
    rows = metric_rows(killed_run["output"])
    restored = [r for r in rows if r.get("event") == "restored"]
    assert len(restored) == 1 and restored[0]["step"] == KILL_AT - 2
    assert killed_run["summary"]["checkpoint"].endswith(f"checkpoint-{STEPS:06d}")
    # Steps 7 and 8 ran before the kill and again after the restore: the log holds both, in order.
    steps = [int(r["step"]) for r in rows if "loss" in r]
    assert steps == list(range(1, KILL_AT + 1)) + list(range(KILL_AT - 1, STEPS + 1))
    first_after = next(r for r in rows[rows.index(restored[0]):] if "loss" in r)
    restart = first_after["wall_clock"] - killed_run["killed_at"]
    print(f"\n[timing] worker SIGKILL -> first step after restore: {restart:.1f}s "
          f"(restore itself {restored[0]['restore_seconds']:.2f}s)")
    assert 0 < restart < 300


def test_every_sample_trained_exactly_once_counting_from_restore(killed_run):
    from pathlib import Path

    final = Path(killed_run["summary"]["checkpoint"])
    ledgers = read_ledgers(final)
    assert_exactly_once(ledgers, STEPS)
    reference_final = Path(killed_run["reference"]["summary"]["checkpoint"])
    assert ledgers == read_ledgers(reference_final)  # the same rows in the same steps as without the failure


def test_losses_after_restore_equal_uninterrupted_run(killed_run):
    resumed = losses_by_step(killed_run["output"])
    reference = losses_by_step(killed_run["reference"]["output"])
    assert sorted(resumed) == sorted(reference) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in resumed.values())
    assert reference[STEPS] < reference[1] - 1e-3  # it trains, so equal losses mean equal states
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
