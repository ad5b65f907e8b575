"""ISA and random subsampling: scores, selection and the written store version (framework/store/subsample.py),
and `alignray store subsample` end to end on Ray workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from framework.store import StoreError, build_store, open_store, verify
from framework.store.subsample import isa_scores, random_scores, select_rows, write_subsample


def _clusters(seed: int = 0) -> np.ndarray:
    """A common cluster of 90 rows and a rare one of 10 (rows 90-99), equally spread, in 8 dims."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1.0, (90, 8)), rng.normal(8, 1.0, (10, 8))])


def test_isa_scores_the_rare_cluster_higher_and_scores_are_entropy_changes():
    x = _clusters()
    scores, density = isa_scores(x, seed=0)
    # Rows of the rare cluster are less probable: removing one lowers the entropy estimate more.
    assert scores[90:].mean() > 0 > scores[:90].mean()
    assert np.mean(np.argsort(-scores)[:10] >= 90) >= 0.4  # 10% of the rows, 40% of the top decile
    assert sorted(density["weights"]) == pytest.approx([0.1, 0.9], abs=1e-3)
    # Removing row j changes the plug-in entropy by scores[j]; the changes average to zero.
    assert abs(scores.mean()) < 1e-9


def test_isa_is_deterministic_for_a_seed():
    x = _clusters()
    first, second = isa_scores(x, seed=3)[0], isa_scores(x, seed=3)[0]
    assert np.array_equal(first, second)


def test_select_rows_keeps_the_top_fraction_in_row_order_with_ties_to_the_lower_index():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    assert select_rows(scores, 0.4).tolist() == [1, 3]
    assert select_rows(np.zeros(5), 0.4).tolist() == [0, 1]
    assert select_rows(scores, 0.01).tolist() == [1]  # at least one row
    with pytest.raises(StoreError):
        select_rows(scores, 0.0)


def test_random_scores_depend_on_the_seed_only():
    assert np.array_equal(random_scores(50, 1), random_scores(50, 1))
    assert not np.array_equal(random_scores(50, 1), random_scores(50, 2))


def _demo_store(tmp_path: Path, rows: int = 60):
    from framework.demo_data import pairs
    from framework.model.demo import demo_tokenizer_path

    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in pairs(rows, seed=0)))
    return build_store([str(source)], str(tmp_path / "store"), tokenizer=demo_tokenizer_path(), num_proc=1,
                       progress=False)


def test_written_subsample_is_a_verified_version_holding_the_chosen_rows(tmp_path):
    version = _demo_store(tmp_path)
    scores = random_scores(version.num_rows, 0)
    chosen = select_rows(scores, 0.25)
    out = write_subsample(version, chosen, scores, {"method": "random", "fraction": 0.25, "seed": 0})
    assert out.num_rows == 15 and verify(out) == [] and open_store(str(tmp_path / "store")).version == out.version
    table, parent = out.table(), version.table()
    assert table["subsample_row"].to_pylist() == chosen.tolist()
    assert table["row_id"].to_pylist() == [parent["row_id"][i].as_py() for i in chosen]
    assert table["subsample_score"].to_pylist() == scores[chosen].tolist()
    assert out.manifest["subsample"]["rows_in"] == 60 and out.manifest["parent"] == version.version


@pytest.mark.slow
def test_subsample_cli_embeds_on_ray_and_is_deterministic(tmp_path, tiny_model_dir, ray_local):
    from launch.store import main

    version = _demo_store(tmp_path, rows=80)
    store = str(tmp_path / "store")
    picked = []
    for _ in range(2):
        assert main(["subsample", version.path.as_posix(), "--method", "isa", "--fraction", "0.1",
                     "--model", tiny_model_dir, "--seed", "1"]) == 0
        current = open_store(store)
        picked.append(current.table()["subsample_row"].to_pylist())
        assert current.manifest["subsample"]["density"]["model"] == tiny_model_dir
    assert picked[0] == picked[1] and len(picked[0]) == 8
    assert main(["subsample", version.path.as_posix(), "--method", "random", "--fraction", "0.1"]) == 0
    assert len(open_store(store).table()["subsample_row"]) == 8
