"""The lean step: one all-reduce before the forwards and one after the last forward per step (finiteness
verdict, metrics and the loop's stop flag together), a time/* breakdown per phase, TensorBoard scalars in one
event per step — with the non-finite semantics unchanged when the bad micro-batch is not the last one."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import compose, single_rank
from tests.engine.test_correctness_gaps import _micro_batch, _optimizer_state, _runner, _same, _weights


def test_phase_timer_sums_per_phase_and_restarts():
    from framework.engine.timing import PHASES, PhaseTimer, device_synchronizer

    calls = []
    timer = PhaseTimer(synchronize=lambda: calls.append(1))
    with timer.phase("forward"):
        sum(range(10000))
    timer.add("forward", 1.0)
    with timer.phase("comm"):
        pass
    first = timer.take()
    assert set(first) == {f"time/{p}" for p in PHASES}
    assert first["time/forward"] > 1.0 and first["time/comm"] >= 0.0 and first["time/data"] == 0.0
    assert len(calls) == 4  # the device is synchronised on entering and leaving each phase
    assert timer.take()["time/forward"] == 0.0
    assert device_synchronizer(torch.device("cpu")) is None  # no sync on CPU, whatever train.sync_timing says


def test_scalars_reach_tensorboard_as_one_event(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from framework.cluster.reporter import write_scalars

    writer = SummaryWriter(str(tmp_path))
    for step in (1, 2):
        write_scalars(writer, {"loss": 0.5 * step, "time/forward": 0.01, "step": step, "wall_clock": 1e9,
                               "event": "not a number", "skipped_steps": 0}, step)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "skipped_steps", "time/forward"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, 1.0)]


def lean_scenario(stage: int) -> dict:
    """Collectives per step and the skip of a step whose *first* of two micro-batches is NaN, on one rank."""
    torch.set_num_threads(1)
    good = [[_micro_batch(1), _micro_batch(2)], [_micro_batch(5), _micro_batch(6)]]
    a = _runner(stage)
    calls = []
    reduce = a.seam.all_reduce_sum
    a.seam.all_reduce_sum = lambda tensor: calls.append(tensor.numel()) or reduce(tensor)
    first = a.train_step(good[0], {"stop": 1.0})
    collectives_good = len(calls)
    times = a.timer.take()
    weights, state, lr = _weights(a), _optimizer_state(a), a.seam.lr()
    calls.clear()
    skipped = a.train_step([_micro_batch(4, nan=True), _micro_batch(3)], {"stop": 0.0})
    unchanged = {"weights": _same(weights, _weights(a)), "optimizer": _same(state, _optimizer_state(a)),
                 "lr": lr == a.seam.lr()}
    collectives_skipped = len(calls)
    a.train_step(good[1])
    b = _runner(stage)
    for group in good:
        b.train_step(group)
    later = max(float((x - y).abs().max()) for x, y in zip(_weights(a), _weights(b)))
    return {"first": first, "collectives": [collectives_good, collectives_skipped], "skipped": skipped,
            "unchanged": unchanged, "max_diff_after": later, "times": times}


@pytest.fixture(scope="module")
def lean_results() -> dict:
    return single_rank("tests.engine.test_lean_step:lean_scenario", [2, 3])


@pytest.mark.slow  # one subprocess, real DeepSpeed engines (ZeRO-2 and ZeRO-3, world size 1): ~20 s
@pytest.mark.parametrize("stage", [2, 3])
def test_two_collectives_per_step_and_flags_ride_along(lean_results, stage):
    result = lean_results[stage]
    assert result["collectives"] == [2, 2]  # window counts; verdict + metrics + flags (2 micro-batches each)
    assert result["first"]["stop"] == 1.0 and result["first"]["nonfinite"] == 0.0
    assert {"loss", "rewards/accuracy", "tokens"} <= set(result["first"]) and result["first"]["tokens"] > 0
    assert all(result["times"][f"time/{p}"] > 0 for p in ("forward", "backward", "optimizer", "comm"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_a_nonfinite_first_micro_batch_changes_nothing(lean_results, stage):
    result = lean_results[stage]
    assert result["skipped"] == {"nonfinite": 1.0, "stop": 0.0}
    assert result["unchanged"] == {"weights": True, "optimizer": True, "lr": True}
    assert result["max_diff_after"] < 1e-6  # no gradient of the skipped step leaks into the next one


@pytest.mark.slow  # one real TorchTrainer run, 1 worker, 6 steps: ~40 s
def test_every_step_line_carries_the_time_breakdown(tmp_path, tiny_model_dir, ray_local):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from framework.engine.timing import PHASES
    from framework.run import train

    output = tmp_path / "run"
    train(compose([f"model.path={tiny_model_dir}", f"output_dir={output}", "train.max_steps=6",
                   "train.eval_at_start=false", "train.eval_at_end=false", "train.export=false",
                   "cluster.num_workers=1", "train.micro_batch_size=4"]))
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [row for row in rows if "loss" in row]
    assert [row["step"] for row in steps] == list(range(1, 7))
    for row in steps:
        times = [row[f"time/{p}"] for p in PHASES]
        assert all(t >= 0 for t in times) and row["time/forward"] > 0 and row["time/data"] > 0
        assert sum(times) - row["time/data"] - row["time/logging"] <= row["step_time"] * 1.01
    assert all(row["time/logging"] > 0 for row in steps[1:])  # the previous step's report
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    assert {"loss", "time/forward", "time/logging", "step_time"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("time/forward")) == 6


def test_breakdown_averages_the_steady_state_in_milliseconds():
    from framework.engine.timing import PHASES, breakdown

    def row(scale: float) -> dict:
        return {"step_time": 0.010 * scale, **{f"time/{p}": 0.001 * scale for p in PHASES}}

    rows = [row(9.0), row(9.0), row(1.0), {"event": "restored"}, row(1.0)]  # the first half is warm-up
    result = breakdown(rows)
    assert result["forward"] == pytest.approx(1.0) and result["data"] == pytest.approx(1.0)
    assert result["other"] == pytest.approx(6.0)  # 10 ms step_time − forward, backward, optimizer, comm
    assert result["step"] == pytest.approx(12.0)  # step_time + data + logging
    assert breakdown([{"step_time": 0.01}]) == {}
