"""Multi-objective ingest: HelpSteer2-style rows grouped by prompt, and the overall label of multi rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from store_helpers import write_jsonl

from framework.store import build_store, verify
from framework.store.errors import StoreError

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def steer(prompt: str, response: str, *scores: float, **extra) -> dict:
    """One HelpSteer2 row: a response and its five attribute scores."""
    return {"prompt": prompt, "response": response, **dict(zip(ATTRIBUTES, scores)), **extra}


def build(tmp_path: Path, rows, tokenizer_dir: str, **kwargs):
    source = write_jsonl(tmp_path / "data.jsonl", rows)
    return build_store([str(source)], str(tmp_path / "store"), tokenizer=tokenizer_dir, num_proc=1,
                       progress=False, **kwargs)


def rejects_of(version) -> list:
    return [(r["line"], r["field"], r["reason"]) for r in version.rejects()]


def test_helpsteer2_rows_are_grouped_by_prompt_in_input_order(tmp_path, tokenizer_dir):
    rows = [steer("Name a colour.", "Blue.", 4, 4, 4, 1, 0),
            steer("Name a fruit.", "An apple, which grows on trees.", 3, 4, 4, 2, 2),
            steer("Name a colour.", "Green, the colour of grass.", 2, 3, 4, 1, 3),  # not adjacent to its pair
            steer("Name a fruit.", "Pear.", 1, 2, 3, 0, 0)]
    version = build(tmp_path, rows, tokenizer_dir, kind="multi")
    colour, fruit = version.table().to_pylist()
    assert colour["responses"] == ["Blue.", "Green, the colour of grass."] and colour["prompt"] == "Name a colour."
    assert colour["objective_names"] == list(ATTRIBUTES)
    assert colour["objective_scores"] == [[4.0, 4.0, 4.0, 1.0, 0.0], [2.0, 3.0, 4.0, 1.0, 3.0]]
    assert fruit["responses"] == ["An apple, which grows on trees.", "Pear."]
    assert [colour["source_line"], fruit["source_line"]] == [1, 2]  # a grouped row's line is its first input row
    assert colour["scores"] is None and fruit["scores"] is None  # no overall preference in HelpSteer2
    counts = version.manifest["counts"]
    assert (counts["rows_read"], counts["rows_written"], counts["rows_merged"], counts["rows_rejected"]) == (4, 2, 2, 0)
    assert verify(version) == []


def test_objectives_option_and_column_map(tmp_path, tokenizer_dir):
    rows = [{"question": "Say hi.", "answer": "Hi!", "helpfulness": 4, "verbosity": 0, "rating": 9},
            {"question": "Say hi.", "answer": "Hello there, friend.", "helpfulness": 3, "verbosity": 2, "rating": 7}]
    version = build(tmp_path, rows, tokenizer_dir, objectives=["verbosity", "rating"],
                    column_map={"question": "prompt", "answer": "response"})
    (row,) = version.table().to_pylist()
    assert row["objective_names"] == ["verbosity", "rating"] and row["objective_scores"] == [[0.0, 9.0], [2.0, 7.0]]
    default = build(tmp_path, rows, tokenizer_dir, column_map={"question": "prompt", "answer": "response"})
    assert default.table()["objective_names"].to_pylist() == [["helpfulness", "verbosity"]]  # the HelpSteer2 ones


def test_bad_helpsteer2_rows_are_rejected_with_line_and_field(tmp_path, tokenizer_dir):
    rows = [steer("A", "a1", 1, 2, 3, 4, 0), steer("A", "a2", 1, 2, 3, 4, 1),       # lines 1-2: a good pair
            steer("B", "only one", 1, 1, 1, 1, 1),                                   # 3: one response
            steer("C", "c1", 1, 1, 1, 1, math.nan), steer("C", "c2", 1, 1, 1, 1, 1),  # 4: NaN, 5: alone then
            steer("D", "d1", 1, 1, 1, 1, 1), {"prompt": "D", "response": "d2", "helpfulness": 1},  # 7: missing
            steer("E", "e1", 1, "high", 1, 1, 1),                                    # 8: non-numeric
            steer("F", "f1", 1, 1, 1, 1, 1), steer("F", "f2", 1, 1, 1, 1, 2), steer("F", "f3", 1, 1, 1, 1, 3)]
    version = build(tmp_path, rows, tokenizer_dir, kind="multi")
    assert version.table()["responses"].to_pylist() == [["a1", "a2"]]
    assert rejects_of(version) == [
        (3, "response", "too_few_responses"), (4, "verbosity", "non_finite_score"),
        (5, "response", "too_few_responses"), (6, "response", "too_few_responses"),
        (7, "correctness", "missing"), (8, "correctness", "not_a_number"),
        (9, "response", "too_many_responses"), (10, "response", "too_many_responses"),
        (11, "response", "too_many_responses")]
    assert all(r["file"] == str(tmp_path / "data.jsonl") and r["raw"] for r in version.rejects())
    counts = version.manifest["counts"]
    assert (counts["rows_read"], counts["rows_written"], counts["rows_merged"], counts["rows_rejected"]) == (11, 1, 1, 9)
    assert counts["rejects_by_reason"]["too_few_responses"] == 3 and verify(version) == []


def test_a_helpsteer2_attribute_outside_the_first_rows_objectives_is_rejected(tmp_path, tokenizer_dir):
    rows = [{"prompt": "P", "response": "r1", "helpfulness": 1},
            {"prompt": "P", "response": "r2", "helpfulness": 2, "verbosity": 3},
            {"prompt": "P", "response": "r3", "helpfulness": 0}]
    version = build(tmp_path, rows, tokenizer_dir)
    assert version.table()["objective_scores"].to_pylist() == [[[1.0], [0.0]]]
    assert rejects_of(version) == [(2, "verbosity", "objective_mismatch")]


def test_grouped_rows_reject_at_every_line_after_tokenisation(tmp_path, tokenizer_dir):
    """A pair that fails later (here: --no-truncate) is listed at both of its input lines, so counts reconcile."""
    rows = [steer("short", "ok", 1, 1, 1, 1, 1), steer("short", "fine", 1, 1, 1, 1, 2),
            steer("long " * 50, "ok", 1, 1, 1, 1, 1), steer("long " * 50, "fine", 1, 1, 1, 1, 2)]
    version = build(tmp_path, rows, tokenizer_dir, max_prompt_tokens=20, truncate=False)
    assert version.num_rows == 1
    assert rejects_of(version) == [(3, "prompt", "prompt_too_long"), (4, "prompt", "prompt_too_long")]
    assert verify(version) == []


def test_multi_rows_keep_the_overall_preference_in_scores(tmp_path, tokenizer_dir):
    rows = [{"prompt": "Two goals", "chosen": "a", "rejected": "b", "objective_scores": [[1, 0.5], [0, 0.7]],
             "objective_names": ["helpful", "harmless"]},
            {"prompt": "Two goals", "responses": ["c", "d"], "scores": [0.2, 0.9],
             "objective_scores": [[1, 0], [0, 1]]},
            {"prompt": "Two goals", "responses": ["e", "f"], "objective_scores": [[1, 0], [0, 1]]},
            {"prompt": "Lock?", "response_0": "Use a pick.", "response_1": "No.", "better_response_id": 0,
             "safer_response_id": 1}]
    pair, scored, unscored, pku = build(tmp_path, rows, tokenizer_dir, kind="multi").table().to_pylist()
    assert pair["scores"] == [1.0, 0.0]  # chosen first: the overall human label
    assert scored["scores"] == [0.2, 0.9]
    assert unscored["scores"] is None and pku["scores"] is None


def test_overall_label_leaves_pairwise_rows_unscored(tmp_path, tokenizer_dir):
    (row,) = build(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}], tokenizer_dir).table().to_pylist()
    assert row["kind"] == "pairwise" and row["scores"] is None


def test_rejects_jsonl_previews_the_input_row(tmp_path, tokenizer_dir):
    rows = [steer("A", "a1", 1, 2, 3, 4, 0), steer("A", "a2", 1, 2, 3, 4, 1), steer("B", "b", 1, 1, 1, 1, None)]
    (reject,) = build(tmp_path, rows, tokenizer_dir).rejects()
    assert (reject["line"], reject["field"], reject["reason"]) == (3, "verbosity", "not_a_number")
    assert json.loads(reject["raw"])["response"] == "b"


def test_grouped_source_equals_its_pre_grouped_form_in_parallel_and_from_parquet(tmp_path, tokenizer_dir):
    """Grouping is only a reading convention: same rows (and row ids) as our own `responses` JSONL."""
    chat = [{"role": "user", "content": "Hi?"}]
    rows = [steer(f"Prompt {i}", f"Reply {i}{r}", i % 5, r, 2, 3, 4) for i in range(1200) for r in (0, 1)]
    rows += [steer(chat, "Hello.", 4, 4, 4, 0, 0), steer(chat, "Hi, how are you today?", 3, 4, 4, 1, 2)]
    grouped = [{"prompt": a["prompt"], "responses": [a["response"], b["response"]], "objective_names": list(ATTRIBUTES),
                "objective_scores": [[a[n] for n in ATTRIBUTES], [b[n] for n in ATTRIBUTES]]}
               for a, b in zip(rows[::2], rows[1::2])]
    steered = build_store([str(write_jsonl(tmp_path / "steer.jsonl", rows))], str(tmp_path / "s"),
                          tokenizer=tokenizer_dir, num_proc=2, progress=False)  # chunks cross the process pool
    own = build_store([str(write_jsonl(tmp_path / "own.jsonl", grouped))], str(tmp_path / "o"),
                      tokenizer=tokenizer_dir, num_proc=1, progress=False)
    ignore = ["source_file", "source_line"]
    assert steered.num_rows == 1201 and steered.table().drop(ignore).equals(own.table().drop(ignore))
    pq.write_table(pa.Table.from_pylist(rows[:10]), tmp_path / "steer.parquet")
    from_parquet = build_store([str(tmp_path / "steer.parquet")], str(tmp_path / "p"), tokenizer=tokenizer_dir,
                               num_proc=1, progress=False)
    assert from_parquet.table()["source_line"].to_pylist() == [0, 2, 4, 6, 8]  # Parquet rows count from 0


def test_a_per_response_source_without_objective_columns_is_a_fatal_error(tmp_path, tokenizer_dir):
    rows = [{"prompt": "P", "response": "r1", "rating": 1}, {"prompt": "P", "response": "r2", "rating": 2}]
    with pytest.raises(StoreError, match=r"data\.jsonl: rows have prompt \+ response but none of the HelpSteer2"):
        build(tmp_path, rows, tokenizer_dir)
    assert build(tmp_path, rows, tokenizer_dir, objectives=["rating"]).num_rows == 1
