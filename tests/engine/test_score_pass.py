"""`store add-scores`: a bt_reward export's scores as one more objective (MODPO's margin rewards, §5.2).

Pairwise rows become multi rows ["preference", NAME]; multi rows get NAME appended (or replaced). The reward
model here is a tiny Llama with a seeded scalar head, saved through `export_hf` as a bt_reward run exports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose

COMPARED = ["row_id", "kind", "prompt", "prompt_is_chat", "responses", "scores", "label", "objective_names",
            "objective_scores", "prompt_ids", "response_ids", "truncated"]


def _store(tmp: Path, rows: list, tokenizer: str, name: str):
    from framework import demo_data
    from framework.store import build_store

    source = demo_data.write_jsonl(iter(rows), tmp / f"{name}.jsonl")
    return build_store([str(source)], str(tmp / name), tokenizer=tokenizer, max_prompt_tokens=64,
                       max_response_tokens=128, progress=False)


def _versions(store) -> list:
    return sorted(p.name for p in store.root.iterdir() if p.name.startswith("v"))


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_model_dir) -> str:
    """A reward model export: the tiny Llama's trunk with a seeded scalar head, written by `export_hf`."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from framework.model.export import export_hf

    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)  # rewards of order 1, not the 0.02-std init's near-zeros
    out = tmp_path_factory.mktemp("reward") / "export"
    return str(export_hf(model.state_dict(), tiny_model_dir, tiny_model_dir, str(out), reward_model=True))


@pytest.fixture(scope="module")
def pair_rows() -> list:
    from framework import demo_data

    return list(demo_data.pairs(16, seed=9))


def test_rows_become_multi_rows_as_the_build_path_makes_them(tmp_path, tiny_model_dir, pair_rows):
    """with_objective + add_columns on a pairwise store give the very rows (ids included) that `store build`
    gives the equivalent multi JSONL; multi rows get the objective appended, or replaced."""
    from framework.store import add_columns, open_store
    from framework.store.extend import OBJECTIVE_INPUT_COLUMNS, OBJECTIVE_OUTPUT_COLUMNS, with_objective

    rows = pair_rows[:6]
    rewards = [[0.25 * i, -1.5 + i] for i in range(len(rows))]
    pairs = _store(tmp_path, rows, tiny_model_dir, "pairs")
    converted = [with_objective(row, "helpful", r) for row, r in
                 zip(pairs.table(columns=list(OBJECTIVE_INPUT_COLUMNS)).to_pylist(), rewards)]
    assert converted[1]["objective_names"] == ["preference", "helpful"]
    assert converted[1]["objective_scores"] == [[1.0, 0.25], [0.0, -0.5]] and converted[1]["scores"] == [1.0, 0.0]
    written = add_columns(pairs, {c: [row[c] for row in converted] for c in OBJECTIVE_OUTPUT_COLUMNS}, note="test",
                          replace_base=OBJECTIVE_OUTPUT_COLUMNS)
    multi_rows = [dict(row, objective_names=["preference", "helpful"], objective_scores=[[1.0, r[0]], [0.0, r[1]]])
                  for row, r in zip(rows, rewards)]
    built = _store(tmp_path, multi_rows, tiny_model_dir, "built")
    assert written.table(columns=COMPARED).to_pylist() == built.table(columns=COMPARED).to_pylist()
    assert not open_store(str(written.path)).table().schema.field("kind").nullable  # base schema kept

    multi = with_objective(converted[0], "safe", [2.0, 3.0])
    assert multi["objective_names"] == ["preference", "helpful", "safe"]
    assert multi["objective_scores"] == [[1.0, 0.0, 2.0], [0.0, -1.5, 3.0]]
    replaced = with_objective(multi, "helpful", [7.0, 8.0])
    assert replaced["objective_scores"] == [[1.0, 7.0, 2.0], [0.0, 8.0, 3.0]] and replaced["row_id"] != multi["row_id"]


def test_bad_input_is_refused_in_one_line_before_any_work(tmp_path, tiny_model_dir, reward_dir, pair_rows, capsys):
    from framework import demo_data
    from launch.cli import main as cli

    pairs = _store(tmp_path, pair_rows[:4], tiny_model_dir, "pairs")
    multi = _store(tmp_path, list(demo_data.multi(4, seed=1)), tiny_model_dir, "multi")
    binary = _store(tmp_path, list(demo_data.binary(4, seed=1)), tiny_model_dir, "binary")
    ranked = _store(tmp_path, list(demo_data.ranked(4, seed=1)), tiny_model_dir, "ranked")
    cases = [
        (pairs, tiny_model_dir, "helpful", f"--reward-model={tiny_model_dir}: not a reward model export (LlamaForCausalLM, 2 labels"),
        (None, reward_dir, "helpful", "not a store (no CURRENT file)"),
        (pairs, reward_dir, "preference", f"store {pairs.path} already has an objective named 'preference' (preference) "
                                          "— pick another --name, or pass --replace"),
        (multi, reward_dir, "brevity", "already has an objective named 'brevity' (topic, brevity)"),
        (binary, reward_dir, "helpful", f"store {binary.path} holds binary rows; reward-model scores can be added to "
                                        "pairwise or multi rows only"),
        (ranked, reward_dir, "helpful", "holds ranked rows"),
        (pairs, reward_dir, " ", "objective name ' ' is empty"),
    ]
    for store, model, name, expected in cases:
        path = str(store.root) if store is not None else str(tmp_path / "missing")
        assert cli(["store", "add-scores", path, "--reward-model", model, "--name", name]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("alignray store: error: ") and expected in err, err
        if store is not None:
            assert _versions(store) == [store.version]  # nothing written: CURRENT as it was


def test_multi_objective_training_refuses_an_unscored_pairwise_store(tmp_path, tiny_model_dir, pair_rows):
    from framework.config import ConfigError
    from framework.data_prep import prepare

    pairs = _store(tmp_path, pair_rows[:4], tiny_model_dir, "pairs")
    cfg = compose(["objective=modpo", f"data.train={pairs.root}", f"model.path={tiny_model_dir}", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="objective=modpo needs multi-objective rows, .* holds pairwise rows .*add-scores"):
        prepare(cfg)


@pytest.mark.slow
def test_scores_equal_the_reward_model_and_pass_and_cli_write_versions(tmp_path, tiny_model_dir, reward_dir, pair_rows,
                                                                      ray_local, capsys):
    from framework import demo_data
    from framework.cluster.store_passes import add_scores
    from framework.model.loading import model_fingerprint
    from framework.model.reward import score
    from framework.store import open_store, verify
    from launch.store_passes import main as store_pass_cli

    pairs = _store(tmp_path, pair_rows, tiny_model_dir, "pairs")
    version = add_scores(str(pairs.root), reward_dir, "helpful", num_workers=2)
    direct = score(reward_dir, [r["prompt"] for r in pair_rows for _ in range(2)],
                   [row[k] for row in pair_rows for k in ("chosen", "rejected")])
    table = version.table(columns=["kind", "objective_names", "objective_scores", "scores"]).to_pylist()
    assert all(r["kind"] == "multi" and r["objective_names"] == ["preference", "helpful"] and r["scores"] == [1.0, 0.0]
               for r in table)
    assert [[r["objective_scores"][k][0] for k in (0, 1)] for r in table] == [[1.0, 0.0]] * len(pair_rows)
    written = [r["objective_scores"][k][1] for r in table for k in (0, 1)]
    assert written == pytest.approx(direct, abs=1e-6) and len(set(written)) == len(written)
    assert version.kind == "multi" and version.manifest["kinds"] == {"multi": len(pair_rows)}
    info = version.manifest["reward_scores"]["helpful"]
    assert (info["model"], info["fingerprint"], info["from_kind"]) == (reward_dir, model_fingerprint(reward_dir), "pairwise")
    assert open_store(str(pairs.root)).version == version.version and verify(version) == []
    assert verify(open_store(str(pairs.path))) == [] and "objective_names" in open_store(str(pairs.path)).columns

    # Multi rows through the CLI, one task: --replace overwrites the "topic" objective in place.
    multi_rows = list(demo_data.multi(8, seed=4))
    multi = _store(tmp_path, multi_rows, tiny_model_dir, "multi")
    assert store_pass_cli(["add-scores", str(multi.root), "--reward-model", reward_dir, "--name", "topic", "--replace",
                           "--num-workers", "1"]) == 0
    assert "rows)" in capsys.readouterr().out
    rescored = open_store(str(multi.root)).table(columns=["objective_names", "objective_scores"]).to_pylist()
    direct = score(reward_dir, [r["prompt"] for r in multi_rows for _ in range(2)],
                   [row[k] for row in multi_rows for k in ("chosen", "rejected")])
    assert all(r["objective_names"] == ["topic", "brevity"] for r in rescored)
    assert [r["objective_scores"][k][0] for r in rescored for k in (0, 1)] == pytest.approx(direct, abs=1e-6)
    assert [r["objective_scores"][k][1] for r in rescored for k in (0, 1)] == [
        row["objective_scores"][k][1] for row in multi_rows for k in (0, 1)]


@pytest.mark.slow
def test_modpo_trains_on_the_scored_store(tmp_path, tiny_model_dir, reward_dir, pair_rows, ray_local):
    """MODPO with target 0 on ["preference", "helpful"]: the human label is the preference, the reward model's
    score the margin reward. At step 1 (policy = reference) the whole-store batch's mean margin reward is
    w_1 · mean(r(chosen) − r(rejected)) with uniform w = [0.5, 0.5]."""
    from framework.cluster.store_passes import add_scores
    from framework.run import train

    pairs = _store(tmp_path, pair_rows, tiny_model_dir, "pairs")
    version = add_scores(str(pairs.root), reward_dir, "helpful", num_workers=1)
    scores = version.table(columns=["objective_scores"]).column("objective_scores").to_pylist()
    out = tmp_path / "run"
    train(compose(["objective=modpo", f"data.train={pairs.root}", f"model.path={tiny_model_dir}", f"output_dir={out}",
                   f"train.micro_batch_size={len(pair_rows)}", "train.max_steps=3", "train.warmup_steps=0",
                   "train.lr=3e-3", "train.eval_at_start=false", "train.eval_at_end=false", "train.export=false",
                   "cluster.num_workers=1"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    expected = 0.5 * sum(s[0][1] - s[1][1] for s in scores) / len(scores)
    assert len(rows) == 3 and rows[0]["modpo/reward_margin"] == pytest.approx(expected, abs=1e-5)
    assert abs(expected) > 1e-3 and rows[-1]["loss"] < rows[0]["loss"]
