"""Non-finite losses for real: a store whose stored reference log-probs are NaN for two rows (a corrupted
`add-reference` column), trained with DPO on 2 workers.

The rows are chosen from the sampler's real plan so that one rank alone sees a bad row in some steps: every
rank must still skip the same steps. Expected: a short streak of skipped steps, a good step resetting the
count, then `train.max_nonfinite_steps`=3 in a row stop the run with a clear message; no checkpoint is written at
the stopping step and every checkpoint that exists has finite weights.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Dict, List, Set

import pytest
import torch

from tests.conftest import compose

ROWS, WORKERS, MICRO, STEPS_PER_EPOCH, MAX_STEPS, IN_A_ROW = 20, 2, 4, 3, 9, 3


def _step_rows(store, step: int) -> List[Set[int]]:
    """Per rank, the store rows (padding repeats included: 0 x NaN is NaN) of 1-based `step`."""
    from framework.store import EpochSampler

    epoch, index = divmod(step - 1, STEPS_PER_EPOCH)
    return [set(EpochSampler(ROWS, rank=r, world_size=WORKERS, batch_size=MICRO, seed=0,
                             lengths=store.token_lengths()).plan(epoch)[index].indices) for r in range(WORKERS)]


def _predict(store, poisoned: Set[int]) -> List[int]:
    """Steps whose batch holds a poisoned row, up to and including the stopping one."""
    bad, streak = [], 0
    for step in range(1, MAX_STEPS + 1):
        if any(rows & poisoned for rows in _step_rows(store, step)):
            bad.append(step)
            streak += 1
            if streak == IN_A_ROW:
                return bad
        else:
            streak = 0
    return bad


def _choose_poison(store) -> Dict:
    """Two rows giving: an early skipped step seen by one rank only, a good step, later IN_A_ROW bad steps."""
    for pair in itertools.combinations(range(ROWS), 2):
        bad = _predict(store, set(pair))  # ends at the first streak of IN_A_ROW (if any)
        stops = len(bad) >= IN_A_ROW and bad[-IN_A_ROW:] == list(range(bad[-1] - IN_A_ROW + 1, bad[-1] + 1))
        if not stops or len(bad) == IN_A_ROW:  # want skipped steps before the stopping streak too
            continue
        if sum(bool(rows & set(pair)) for rows in _step_rows(store, bad[0])) == 1:
            return {"rows": set(pair), "bad": bad}
    raise AssertionError("no pair of rows gives the wanted pattern; the demo data changed")


def _poisoned_store(root: Path, tiny: str) -> Dict:
    """Demo pairs → store → real reference log-probs of the tiny model (same fingerprint training checks) →
    NaN for the two chosen rows."""
    from framework import demo_data
    from framework.cluster.reference import reference_fingerprint
    from framework.engine.batches import BatchBuilder
    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.model.logprobs import sequence_logps
    from framework.store import build_store, open_store
    from framework.store.extend import add_columns

    source = demo_data.write_jsonl(demo_data.pairs(ROWS, seed=1), root / "pairs.jsonl")
    version = build_store([str(source)], str(root / "store"), tokenizer=tiny, kind="pairwise",
                          max_prompt_tokens=64, max_response_tokens=128, progress=False)
    store = open_store(str(version.path))
    builder = BatchBuilder(load_tokenizer(tiny).pad_token_id, 128, 64, "pairwise", False)
    batch = builder.build(store.take(list(range(ROWS))), [False] * ROWS)
    with torch.no_grad():
        out = sequence_logps(load_causal_lm(tiny).eval(), batch.tokens)
    logps, lengths = out["logps"].double().tolist(), out["lengths"].int().tolist()
    poison = _choose_poison(store)
    for row in poison["rows"]:
        logps[row] = [float("nan")] * len(logps[row])
    reference = {"fingerprint": reference_fingerprint(tiny, 128, 64), "model": tiny, "max_length": 128}
    poisoned = add_columns(store, {"ref_logps": logps, "ref_lengths": lengths}, "reference log-probs, 2 rows NaN",
                           extra_manifest={"reference": reference})
    return {"store": str(poisoned.path), **poison}


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory, tiny_model_dir, ray_local):
    from framework.run import train

    root = tmp_path_factory.mktemp("nonfinite")
    data = _poisoned_store(root, tiny_model_dir)
    output = root / "run"
    cfg = compose([f"data.train={data['store']}", "data.use_stored_reference=require", f"model.path={tiny_model_dir}",
                   f"output_dir={output}", f"train.max_steps={MAX_STEPS}", "train.checkpoint_every=1",
                   "train.keep_checkpoints=20", f"train.max_nonfinite_steps={IN_A_ROW}",
                   "train.eval_at_start=false", "train.eval_at_end=false", "train.export=false", "train.lr=1e-3",
                   f"cluster.num_workers={WORKERS}", f"train.micro_batch_size={MICRO}", "deepspeed=zero2"])
    with pytest.raises(Exception) as failure:
        train(cfg)
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"data": data, "output": output, "error": str(failure.value), "rows": rows}



@pytest.mark.slow
def test_run_stops_after_max_nonfinite_steps_with_clear_message(nan_run):
    stop = nan_run["data"]["bad"][-1]
    assert "NaN/Inf" in nan_run["error"] and f"train.max_nonfinite_steps={IN_A_ROW}" in nan_run["error"]
    assert max(int(r["step"]) for r in nan_run["rows"]) == stop - 1  # the stopping step reports nothing


@pytest.mark.slow
def test_skipped_steps_are_the_poisoned_ones_and_counted(nan_run):
    bad = nan_run["data"]["bad"]
    by_step = {int(r["step"]): r for r in nan_run["rows"]}
    skipped = [s for s, r in sorted(by_step.items()) if r.get("nonfinite")]
    assert skipped == bad[:-1]  # exactly the steps that hold a NaN row, whichever rank held it
    for step, row in by_step.items():
        assert row["skipped_steps"] == sum(1 for s in bad if s <= step)
        assert ("loss" in row) == (step not in bad)
        assert step in bad or math.isfinite(row["loss"])


@pytest.mark.slow
def test_every_rank_skipped_the_same_steps_and_checkpoints_are_finite(nan_run):
    from framework.engine.seam import consolidated_state_dict

    bad, stop = nan_run["data"]["bad"], nan_run["data"]["bad"][-1]
    checkpoints = sorted((nan_run["output"] / "ray").glob("train-*/checkpoint-*"))
    assert [int(c.name.split("-")[1]) for c in checkpoints] == list(range(1, stop))  # none at the stop
    last = checkpoints[-1]
    for rank in range(WORKERS):
        ledger = [json.loads(line) for line in (last / f"ledger-rank{rank:03d}.jsonl").read_text().splitlines()]
        assert [e["step"] for e in ledger if not e["applied"]] == bad[:-1]
    for checkpoint in checkpoints:
        weights = consolidated_state_dict(str(checkpoint))
        assert all(bool(t.float().isfinite().all()) for t in weights.values()), checkpoint.name


def test_weights_check_sees_nan_in_any_parameter():
    from framework.engine.loop import _weights_finite

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    assert _weights_finite(model)
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    assert not _weights_finite(model)
