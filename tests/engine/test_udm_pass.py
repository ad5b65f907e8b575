"""BCO's UDM weights: `add_udm_weights` (Ray store pass), `alignray store add-udm-weights`, and `data.udm=true`
in training. The data puts desirable and undesirable rows mostly on different prompt topics, so the prompt
classifier has something to find."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose

REPO = Path(__file__).resolve().parents[2]
DESIRABLE_TOPICS, UNDESIRABLE_TOPICS = ("fruit", "animals", "weather", "music"), ("colors", "tools", "sports", "food")


def _topic_rows(n: int, seed: int, share: float = 0.8) -> list:
    """Binary rows, half desirable; a desirable prompt is on a desirable topic with probability `share`, an
    undesirable prompt on an undesirable topic with the same probability."""
    from framework.demo_data import PROMPT_TEMPLATES, TOPICS

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2 == 0
        home, away = (DESIRABLE_TOPICS, UNDESIRABLE_TOPICS) if label else (UNDESIRABLE_TOPICS, DESIRABLE_TOPICS)
        topic = rng.choice(home if rng.random() < share else away)
        completion = " ".join(rng.sample(TOPICS[topic], 6)) + " ."
        rows.append({"prompt": rng.choice(PROMPT_TEMPLATES).format(t=topic), "completion": completion, "label": label})
    return rows


def _topic(prompt: str) -> str:
    return next(t for t in DESIRABLE_TOPICS + UNDESIRABLE_TOPICS if t in prompt.split())


def _store(tmp: Path, rows: list, tokenizer: str, name: str):
    from framework import demo_data
    from framework.store import build_store

    source = demo_data.write_jsonl(iter(rows), tmp / f"{name}.jsonl")
    return build_store([str(source)], str(tmp / name), tokenizer=tokenizer, max_prompt_tokens=64,
                       max_response_tokens=128, progress=False)


def test_single_class_and_non_binary_stores_are_refused(tmp_path, tiny_model_dir):
    from framework import demo_data
    from framework.cluster.store_passes import add_udm_weights
    from framework.store import StoreError

    desirable_only = _store(tmp_path, [r for r in _topic_rows(20, seed=3) if r["label"]], tiny_model_dir, "one-class")
    with pytest.raises(StoreError, match="has only desirable ones"):
        add_udm_weights(str(desirable_only.root), tiny_model_dir)
    pairs = _store(tmp_path, list(demo_data.pairs(10, seed=3)), tiny_model_dir, "pairs")
    with pytest.raises(StoreError, match="need binary feedback.*'pairwise'"):
        add_udm_weights(str(pairs.root), tiny_model_dir)
    assert [p.name for p in desirable_only.root.iterdir() if p.name.startswith("v")] == [desirable_only.version]


def test_cli_refuses_single_class_store_in_one_line(tmp_path, tiny_model_dir):
    undesirable_only = _store(tmp_path, [r for r in _topic_rows(20, seed=3) if not r["label"]], tiny_model_dir, "bad")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "launch.cli", "store", "add-udm-weights", str(undesirable_only.root),
                           "--model", tiny_model_dir, "--num-workers", "1"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (f"alignray store: error: UDM needs desirable and undesirable rows, but store {undesirable_only.path} has "
            "only undesirable ones — add rows of the other class") in done.stderr.splitlines()
    assert [p.name for p in undesirable_only.root.iterdir() if p.name.startswith("v")] == [undesirable_only.version]


def test_data_udm_needs_bco():
    from framework.config import ConfigError

    with pytest.raises(ConfigError, match="data.udm=true needs objective=bco"):
        compose(["objective=kto", "data.udm=true"])
    assert compose(["objective=bco", "data.udm=true"]).data.udm


@pytest.mark.slow
def test_add_udm_weights_pass_and_cli(tmp_path, tiny_model_dir, ray_local, capsys):
    from framework.cluster.store_passes import add_udm_weights
    from framework.model.loading import model_fingerprint
    from framework.store import open_store, verify
    from launch.store_passes import main as store_pass_cli

    rows = _topic_rows(96, seed=4)
    before = _store(tmp_path, rows, tiny_model_dir, "topics")
    version = add_udm_weights(str(before.root), tiny_model_dir, sample_size=32, seed=0)
    weights = version.table(columns=["udm_weights"]).column("udm_weights").to_pylist()
    assert len(weights) == len(rows) and all(0.5 <= w <= 10.0 for w in weights)
    assert len({round(w, 6) for w in weights}) > 1
    # Prompts on desirable topics look like desirable data: their density ratio is higher.
    on_desirable = [w for w, r in zip(weights, rows) if _topic(r["prompt"]) in DESIRABLE_TOPICS]
    on_undesirable = [w for w, r in zip(weights, rows) if _topic(r["prompt"]) in UNDESIRABLE_TOPICS]
    assert sum(on_desirable) / len(on_desirable) > 1.5 > sum(on_undesirable) / len(on_undesirable)
    udm = version.manifest["udm"]
    assert udm["accuracy"] > 0.65 and udm["sample_desirable"] == udm["sample_undesirable"] == 32
    assert udm["fingerprint"] == model_fingerprint(tiny_model_dir) and (udm["min_ratio"], udm["max_ratio"]) == (0.5, 10.0)
    # The previous version is untouched and the new one is current.
    assert open_store(str(before.root)).version == version.version
    assert "udm_weights" not in open_store(str(before.path)).columns and verify(open_store(str(before.path))) == []

    # The CLI with the same seed, split over one task instead of two, writes the same weights (a third version)
    # and prints accuracy and range.
    assert store_pass_cli(["add-udm-weights", str(before.root), "--model", tiny_model_dir, "--sample-size", "32",
                           "--num-workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"UDM classifier accuracy {udm['accuracy']:.3f}" in out and "weights in [0.5, " in out
    again = open_store(str(before.root))
    assert again.version not in (before.version, version.version)
    assert again.table(columns=["udm_weights"]).column("udm_weights").to_pylist() == pytest.approx(weights, abs=1e-6)


@pytest.mark.slow
def test_bco_trains_with_udm_weights(tmp_path, tiny_model_dir, ray_local):
    from framework import demo_data
    from framework.run import train
    from framework.store import open_store

    source = demo_data.write_jsonl(iter(_topic_rows(32, seed=5)), tmp_path / "topics.jsonl")
    out = tmp_path / "run"
    train(compose(["objective=bco", "data.udm=true", f"data.train={source}", f"model.path={tiny_model_dir}",
                   f"output_dir={out}", "train.micro_batch_size=4", "train.max_steps=3", "train.warmup_steps=0",
                   "train.eval_at_start=false", "train.eval_at_end=false", "train.export=false", "cluster.num_workers=2"]))
    store = open_store(str(out / "store" / "train"))
    assert "udm_weights" in store.columns and store.manifest["udm"]["accuracy"] > 0.5
    logged = [json.loads(line)["udm_weights"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "udm_weights" in json.loads(line)]
    assert len(logged) == 3 and all(math.isfinite(w) and 0.5 <= w <= 10.0 for w in logged)
    assert any(abs(w - 1.0) > 0.05 for w in logged)  # without UDM the logged weight is exactly 1


def test_udm_weights_are_used_only_when_asked():
    """A store may keep a `udm_weights` column from an earlier run; BCO reads it only with data.udm=true."""
    import pyarrow as pa

    from framework.engine.batches import BatchBuilder
    from framework.errors import UserError

    table = pa.table({"prompt_ids": [[1, 2], [1, 3]], "response_ids": [[[4, 5]], [[6]]], "label": [True, False],
                      "udm_weights": [1.0, 2.5]})
    plain = BatchBuilder(0, 16, 8, "binary", False).build(table, [False, False])
    assert "udm_weights" not in plain.annotations
    weighted = BatchBuilder(0, 16, 8, "binary", False, use_udm_weights=True).build(table, [False, False])
    assert weighted.annotations["udm_weights"].tolist() == [1.0, 2.5]
    with pytest.raises(UserError, match="no udm_weights column"):
        BatchBuilder(0, 16, 8, "binary", False, use_udm_weights=True).build(table.drop(["udm_weights"]), [False, False])
