"""`alignray bench dpo` / `scaling`: steady-state arithmetic, ratios, arguments, the rows both sides train on,
and one small end-to-end run against TRL."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _harness, dpo
from benchmarks.dpo_check import matching_rows, store_sequences, trl_sequences

REPO = Path(__file__).resolve().parents[2]


def _steps(ends, compute=0.1, tokens=None):
    return [{"step": i + 1, "end": end, "compute": compute, **({"tokens": tokens} if tokens else {})}
            for i, end in enumerate(ends)]


def test_steady_state_uses_the_intervals_between_step_ends_after_warmup():
    # steps 1..5 end at 10, 11, 11.5, 12.5, 13: after warm-up 2 the intervals are 0.5, 1.0, 0.5
    rates = _harness.steady_state(_steps([10.0, 11.0, 11.5, 12.5, 13.0], tokens=40), warmup=2)
    assert rates["steps_measured"] == 3
    assert rates["interval_steps_per_s"] == pytest.approx(3 / 2.0)
    assert rates["median_interval_steps_per_s"] == pytest.approx(2.0)
    assert rates["compute_steps_per_s"] == pytest.approx(10.0)
    assert rates["tokens_per_step"] == 40
    assert "tokens_per_step" not in _harness.steady_state(_steps([1.0, 2.0, 3.0, 4.0]), warmup=1)
    with pytest.raises(ValueError, match="raise the number of steps"):
        _harness.steady_state(_steps([1.0, 2.0, 3.0]), warmup=2)


def test_measure_gives_pairs_and_tokens_per_second_and_ratio_divides_ours_by_theirs():
    raw = {"steps": _steps([100.0, 100.5, 101.0, 101.5], tokens=300), "launched_at": 90.0, "first_loss": 0.69}
    run = dpo.measure(raw, batch=8, warmup=1)
    assert run["pairs_per_s"] == pytest.approx(16.0) and run["tokens_per_s"] == pytest.approx(600.0)
    assert run["launch_to_first_step_s"] == 10.0 and "steps" in run and run["first_loss"] == 0.69
    assert dpo.ratio({"pairs_per_s": 30.0}, {"pairs_per_s": 10.0}) == 3.0
    with pytest.raises(ValueError):
        dpo.ratio({"pairs_per_s": 1.0}, {"pairs_per_s": 0.0})


def test_time_breakdown_averages_every_time_key():
    rows = [{"step": 1, "time/forward": 0.2, "time/backward": 0.4, "loss": 1.0}, {"step": 2, "time/forward": 0.4}]
    assert _harness.time_breakdown(rows) == {"time/backward": 0.4, "time/forward": pytest.approx(0.3)}
    assert _harness.time_breakdown([{"step": 1, "loss": 0.5}]) == {}


def test_interleaved_rounds_alternate_the_order():
    assert list(_harness.interleaved(["a", "b"], 3)) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]


def test_arguments_pick_the_workload_and_its_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(dpo, "shared_hh_data", lambda checkout=None: None)
    args = dpo.parse_args([])
    assert (args.workload, args.max_length, args.baseline) == ("demo", 64, "trl")
    data = tmp_path / "pairs.jsonl"
    args = dpo.parse_args(["--data", str(data), "--steps", "12"])
    assert (args.workload, args.data, args.max_length, args.steps) == ("hh", str(data), 512, 12)
    for bad in (["--workload", "hh"], ["--workload", "demo", "--data", str(data)], ["--batch", "7"],
                ["--steps", "5", "--warmup", "4"], ["--baseline", "openrlhf"]):
        with pytest.raises(SystemExit):
            dpo.parse_args(bad)
    monkeypatch.setattr(dpo, "shared_hh_data", lambda checkout=None: data)
    assert dpo.parse_args([]).workload == "hh"
    scaling = dpo.parse_args([], prog="alignray bench scaling")
    assert (scaling.workload, scaling.workers) == ("hh", 1)
    with pytest.raises(SystemExit):  # scaling runs both worker counts itself
        dpo.parse_args(["--workers", "2"], prog="alignray bench scaling")


def test_shared_hh_data_is_found_beside_the_checkout(tmp_path):
    checkout = tmp_path / "main"
    folder = tmp_path / "shared" / "data" / "hh-rlhf"
    folder.mkdir(parents=True)
    (folder / "part.jsonl.gz").write_bytes(b"")
    found = dpo.shared_hh_data(checkout)
    assert found is not None and found.name.endswith(".jsonl.gz")


def test_explicit_pairs_split_dialogues_at_the_last_assistant_turn():
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
            {"prompt": "p", "chosen": "same", "rejected": "same"},
            {"prompt": "q", "chosen": " a", "rejected": " b"}]
    assert dpo.explicit_pairs(rows) == [
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello there", "rejected": " go away"},
        {"prompt": "q", "chosen": " a", "rejected": " b"}]


def test_fit_rows_keeps_what_trl_keeps_and_counts_tokens_its_way():
    class WordTokenizer:  # one token per word; EOS is a word too
        eos_token = " </s>"

        def __call__(self, text):
            return {"input_ids": text.split()}

    rows = [{"prompt": "a b c", "chosen": " d e", "rejected": " f"},  # 3+2+1 and 3+1+1 tokens
            {"prompt": "a b c d e", "chosen": " f", "rejected": " g"},  # prompt fills max_length 5: TRL drops it
            {"prompt": "a", "chosen": " b c d e f g", "rejected": " h"}]  # 1+6+1 cut to 5, and 1+1+1
    kept, per_pair = dpo.fit_rows(rows, WordTokenizer(), max_length=5)
    assert kept == [rows[0], rows[2]]
    assert per_pair == pytest.approx(((5 + 5) + (5 + 3)) / 2)


def test_alignray_overrides_match_trls_budget_and_compose():
    from framework.config import compose_config

    inputs = {"model": "/m", "data": "/d.jsonl", "max_length": 512, "steps": 30, "batch": 8}
    overrides = dpo.alignray_overrides(inputs, 2, "/tmp/out", ["model.packing=false"])
    assert "data.max_prompt_length=511" in overrides and "train.micro_batch_size=4" in overrides
    cfg = compose_config(overrides)
    assert cfg.cluster.num_workers * cfg.train.micro_batch_size == 8 and cfg.model.packing is False
    assert cfg.cluster.cpus_per_worker == 1 and cfg.data.max_length == 512


def test_both_sides_sequences_are_cut_alike_and_matched_once():
    import pyarrow as pa

    dataset = [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5, 6], "rejected_ids": [7]},
               {"prompt_ids": [9], "chosen_ids": [8], "rejected_ids": [7]}]
    table = pa.table({"prompt_ids": [[9], [1, 2, 3]], "response_ids": [[[8], [7]], [[4, 5, 6], [7]]]})
    theirs, ours = trl_sequences(dataset, 5), store_sequences(table, 5, 4)
    assert theirs[0] == ((1, 2, 3, 4, 5), (1, 2, 3, 7)) and sorted(theirs) == sorted(ours)
    assert matching_rows(theirs, ours) == [1, 0]


@pytest.mark.slow
def test_bench_dpo_demo_end_to_end(tmp_path):
    """The real command: TRL and alignray each in its own process, the loss check, the JSON and the chart."""
    out = tmp_path / "dpo.json"
    command = [sys.executable, "-m", "launch.cli", "bench", "dpo", "--baseline", "trl", "--workload", "demo",
               "--steps", "12", "--warmup", "3", "--repeats", "1", "--rows", "200", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["ratio"] > 0 and record["loss_check"]["passed"], record["loss_check"]
    assert record["loss_check"]["rows_only_in_trl"] == record["loss_check"]["rows_only_in_alignray"] == 0
    assert abs(record["loss_check"]["trl_loss"] - 0.6931) > 1e-3  # the perturbed reference makes it token-sensitive
    assert set(record["runs"]) == {"trl", "alignray_1w"} and record["config"]["workload"] == "demo"
    assert record["environment"]["trl"] and Path(record["chart"]).is_file()
