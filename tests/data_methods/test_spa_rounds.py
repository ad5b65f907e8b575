"""SPA rounds: the labelling rule and prompt split (fast), and one real round on Ray (slow)."""

import json
import math
from pathlib import Path

import pytest

from framework.cluster.spa import label, pair_rows, prompt_shares


def test_label_orders_each_pair_by_the_implicit_reward_against_the_initial_model():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "c", "rejected": "d"}]
    policy, initial = [[-3.0, -5.0], [-9.0, -2.0]], [[-1.0, -6.0], [-10.0, -1.0]]  # ρ = [-2, 1], [1, -1]
    labelled, rewards = label(rows, policy, initial, beta=0.5)
    assert [(r["chosen"], r["rejected"]) for r in labelled] == [("b", "a"), ("c", "d")]
    assert rewards == [[0.5, -1.0], [0.5, -0.5]]


def test_identical_samples_are_dropped_and_chat_prompts_kept_as_messages():
    chat = json.dumps([{"role": "user", "content": "hi"}])
    rows = pair_rows([("x", False), ("y", False), (chat, True)], [["a", "a "], ["a", "b"], ["c", "d"]])
    assert rows == [{"prompt": "y", "chosen": "a", "rejected": "b"},
                    {"prompt": [{"role": "user", "content": "hi"}], "chosen": "c", "rejected": "d"}]


def test_prompt_shares_cover_every_prompt_once():
    prompts = [(str(i), False) for i in range(10)]
    shares = prompt_shares(prompts, 3)
    assert [len(s) for s in shares] == [4, 3, 3]
    assert sum(shares, []) == prompts


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_spa_round_on_ray_writes_a_labelled_store_version(tmp_path, tiny_model_dir, ray_local):
    from framework.cluster.spa import run_rounds
    from framework import demo_data
    from framework.store import open_store

    seed = demo_data.write_jsonl(demo_data.pairs(16, seed=11), tmp_path / "seed.jsonl")
    held_out = demo_data.write_jsonl(demo_data.pairs(16, seed=2), tmp_path / "eval.jsonl")
    prompts = [(row["prompt"], False) for row in demo_data.pairs(12, seed=12)]
    overrides = [f"model.path={tiny_model_dir}", f"data.eval={held_out}", "cluster.num_workers=2", "train.max_steps=3",
                 "train.micro_batch_size=4", "train.warmup_steps=0", "cluster.num_cpus=4"]
    records = run_rounds(str(seed), prompts, rounds=1, out=tmp_path / "spa", overrides=overrides, beta=0.1,
                         sampling={"max_new_tokens": 8, "temperature": 1.0, "seed": 0}, num_workers=2)
    assert [r["round"] for r in records] == [0, 1]
    version = open_store(records[1]["train"])
    spa = version.manifest["spa"]
    assert spa["round"] == 1 and spa["model"] == records[0]["export"]
    assert spa["labeller"]["initial"] == tiny_model_dir and spa["pairs"] == version.num_rows > 0
    rewards = version.table(columns=["spa_rewards"]).column("spa_rewards").to_pylist()
    assert all(chosen >= rejected for chosen, rejected in rewards)
    summary = json.loads((tmp_path / "spa" / "round-1" / "summary.json").read_text())
    assert summary["steps"] == 3 and not math.isnan(summary["final_loss"])
    assert Path(records[1]["export"]).is_dir()
    steps = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines() if '"lr"' in line]
    assert all("spa/confident" in step for step in steps)  # round 1 trained with objective=spa
    # The threshold buffer holds both ranks' margins (one rank alone sees at most 4 real pairs per step).
    state = json.loads(next((tmp_path / "spa" / "round-1").rglob("alignray_state.json")).read_text())
    real_pairs = sum(len(entry["rows"]) for entry in map(json.loads, next(
        (tmp_path / "spa" / "round-1").rglob("ledger-rank000.jsonl")).read_text().splitlines()))
    assert len(state["objective"]["margins"]) > real_pairs
