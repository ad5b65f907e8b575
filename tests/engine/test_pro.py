"""The Preference Orchestrator for real: adapter training on a multi-objective store, prompt weights written into
a new store version, `alignray orchestrate`, and `alignray train objective=pro` on Ray Train + DeepSpeed."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from framework import demo_data
from tests.conftest import REPO, compose

BRIEF, PLAIN = "briefly , tell me about animals .", "tell me about animals ."


@pytest.fixture(scope="module")
def multi_store(tmp_path_factory):
    from framework.model.demo import demo_tokenizer_path
    from framework.store import build_store

    tmp = tmp_path_factory.mktemp("pro")
    source = demo_data.write_jsonl(demo_data.multi(600, seed=3), tmp / "multi.jsonl")
    return build_store([str(source)], str(tmp / "store"), tokenizer=demo_tokenizer_path(), kind="multi", progress=False)


@pytest.fixture(scope="module")
def adapter(multi_store, tmp_path_factory):
    from framework.model.orchestrator import train_orchestrator

    out = tmp_path_factory.mktemp("adapter") / "orchestrator"
    info = train_orchestrator(str(multi_store.path), str(out), epochs=4, seed=0)
    return str(out), info


def test_adapter_learns_which_objective_each_prompt_asks_for(adapter):
    """Demo labellers prefer the brief response after "briefly ," and the on-topic one otherwise: the targets
    follow the prompt, and the adapter learns it (held-out KL well below a constant predictor's)."""
    from framework.model.orchestrator import LoadedOrchestrator

    path, info = adapter
    assert info["objective_names"] == ["topic", "brevity"] and info["rows_with_overall_label"] == info["rows"]
    metrics = info["metrics"]
    assert metrics["heldout_kl"] < 0.5 * metrics["heldout_kl_constant"] and metrics["heldout_top1"] > 0.8
    weights = LoadedOrchestrator(path).weights([BRIEF, PLAIN])
    assert weights[0, 1] > 0.8 and weights[1, 0] > 0.6  # brevity for the first prompt, topic for the second
    assert torch.allclose(weights.sum(-1), torch.ones(2))


def test_prompt_weights_pass_writes_a_new_version_and_reuses_it(multi_store, adapter, tmp_path):
    from framework.cluster.orchestrate import add_prompt_weights
    from framework.model.demo import demo_tokenizer_path
    from framework.model.orchestrator import LoadedOrchestrator, context_prompt_ids
    from framework.store import open_store
    from framework.store.tokenize import load_tokenizer

    path, _ = adapter
    version = add_prompt_weights(str(multi_store.path), path, demo_tokenizer_path(), 64)
    assert version.version != multi_store.version and version.manifest["orchestrator"]["adapter"] == path
    cols = version.table(columns=["prompt", "prompt_ids", "prompt_weights", "context_prompt_ids"]).to_pydict()
    expected = LoadedOrchestrator(path).weights(cols["prompt"][:8])
    assert torch.allclose(torch.tensor(cols["prompt_weights"][:8], dtype=torch.float64), expected.double(), atol=0.0101)
    tok = load_tokenizer(demo_tokenizer_path())
    assert cols["context_prompt_ids"][0] == context_prompt_ids(tok, ["topic", "brevity"], cols["prompt_weights"][0],
                                                               cols["prompt_ids"][0], 64)
    assert "[weights topic=" in tok.decode(cols["context_prompt_ids"][0])
    again = add_prompt_weights(str(version.path), path, demo_tokenizer_path(), 64)
    assert again.version == version.version and open_store(str(multi_store.root)).version == version.version


def test_random_weights_share_replaces_the_adapters_weights_reproducibly(multi_store, adapter, tmp_path):
    import shutil

    from framework.cluster.orchestrate import add_prompt_weights
    from framework.model.demo import demo_tokenizer_path

    shutil.copytree(multi_store.root, tmp_path / "store")
    adapter_version = add_prompt_weights(str(tmp_path / "store"), adapter[0], demo_tokenizer_path(), 64)
    by_adapter = adapter_version.table(columns=["prompt_weights"]).column("prompt_weights").to_pylist()

    def randomised(seed):
        version = add_prompt_weights(str(tmp_path / "store"), adapter[0], demo_tokenizer_path(), 64,
                                     random_share=0.5, seed=seed)
        return version.table(columns=["prompt_weights"]).column("prompt_weights").to_pylist()

    first, other, again = randomised(0), randomised(1), randomised(0)  # the last is recomputed, not reused
    assert first == again and first != other
    changed = sum(a != b for a, b in zip(first, by_adapter)) / len(first)
    assert 0.35 < changed < 0.65 and all(abs(sum(w) - 1.0) < 1e-9 and min(w) >= 0 for w in first)


def test_adapter_for_other_objectives_is_refused(multi_store, adapter, tmp_path):
    from framework.cluster.orchestrate import add_prompt_weights
    from framework.model.demo import demo_tokenizer_path
    from framework.store import build_store
    from framework.store.errors import StoreError

    rows = [dict(r, objective_names=["a", "b"]) for r in demo_data.multi(4, seed=1)]
    other = build_store([str(demo_data.write_jsonl(iter(rows), tmp_path / "o.jsonl"))], str(tmp_path / "o"),
                        tokenizer=demo_tokenizer_path(), kind="multi", progress=False)
    with pytest.raises(StoreError, match="adapter .* was trained for"):
        add_prompt_weights(str(other.path), adapter[0], demo_tokenizer_path(), 64)


def _cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_orchestrate_cli_trains_and_prints_weights(tmp_path):
    source = demo_data.write_jsonl(demo_data.multi(300, seed=4), tmp_path / "multi.jsonl")
    trained = _cli("orchestrate", "train", "--data", str(source), "--out", str(tmp_path / "adapter"), "--epochs", "4")
    assert "held-out KL" in trained.stdout and (tmp_path / "adapter" / "orchestrator.json").exists()
    printed = _cli("orchestrate", "weights", str(tmp_path / "adapter"), BRIEF, PLAIN, "--json")
    lines = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [line["prompt"] for line in lines] == [BRIEF, PLAIN]
    assert all(math.isclose(sum(line["weights"].values()), 1.0) for line in lines)
    assert lines[0]["context_line"].startswith("[weights topic=")
    missing = _cli("orchestrate", "weights", str(tmp_path / "nothing"), "hi", check=False)
    assert missing.returncode == 2 and "not an orchestrator adapter" in missing.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_pro_trains_the_adapter_then_the_policy_and_reuses_a_saved_adapter(tmp_path, tiny_model_dir, ray_local):
    from framework.run import train

    base = ["objective=pro", f"model.path={tiny_model_dir}", "data.demo_train_rows=64", "data.demo_eval_rows=16",
            "train.max_steps=3", "train.warmup_steps=0", "train.lr=3e-3", "train.micro_batch_size=4",
            "train.export=false", "cluster.num_workers=2"]
    train(compose(base + [f"output_dir={tmp_path / 'a'}", "deepspeed=zero2"]))
    adapter = tmp_path / "a" / "orchestrator"
    assert (adapter / "orchestrator.json").exists()
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert steps[0]["pro/weight/topic"] + steps[0]["pro/weight/brevity"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= steps[0]["pro/weight_entropy"] <= math.log(2)
    # A second run reuses the saved adapter (no training), at ZeRO-3.
    train(compose(base + [f"output_dir={tmp_path / 'b'}", "deepspeed=zero3", f"objective.adapter={adapter}"]))
    assert not (tmp_path / "b" / "orchestrator").exists()
    again = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["pro/weight/topic"] for r in again if "loss" in r][:1] == pytest.approx([steps[0]["pro/weight/topic"]])
