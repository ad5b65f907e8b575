"""Validation: every row read is written or rejected with file, line, field and reason; counts reconcile."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from store_helpers import write_jsonl

from framework.store import StoreError, build_store, verify

GOOD = {"prompt": "What colour is the sky?", "chosen": "It is blue.", "rejected": "It is green."}
# (row as written, expected reason, expected field): one per reject rule in the issue, and a few more.
BAD = [
    ('{"prompt": "unterminated', "invalid_json", None),
    ("[1, 2, 3]", "not_an_object", None),
    ('"just a string"', "not_an_object", None),
    ({"text": "no known columns"}, "unrecognised_columns", None),
    ({"chosen": "a", "rejected": "b", "prompt": None}, "null", "prompt"),
    ({"prompt": "p", "rejected": "b"}, "missing", "chosen"),
    ({"prompt": 42, "chosen": "a", "rejected": "b"}, "not_text", "prompt"),
    ({"prompt": "p", "chosen": ["not", "messages"], "rejected": "b"}, "not_text", "chosen"),
    ({"prompt": "   \n", "chosen": "a", "rejected": "b"}, "empty", "prompt"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "empty", "chosen"),
    ({"prompt": "p", "chosen": "a", "rejected": " \t"}, "empty", "rejected"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical_responses", "rejected"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0, float("nan")]}, "non_finite_score", "scores"),
    ('{"prompt": "p", "responses": ["a", "b"], "scores": [1.0, Infinity]}', "non_finite_score", "scores"),
    ({"prompt": "p", "responses": ["only one"], "scores": [1.0]}, "too_few_responses", "responses"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0]}, "length_mismatch", "scores"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0, "high"]}, "not_a_number", "scores"),
    ({"prompt": "p", "completion": "c", "label": "maybe"}, "not_boolean", "label"),
    ({"prompt": "p", "completion": "c", "label": 2}, "not_boolean", "label"),
    ({"prompt": "p", "completion": "c"}, "missing", "label"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "bad_message", "prompt"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant:"}, "empty", "rejected"),
    ({"chosen": "apples", "rejected": "pears"}, "no_shared_prompt", "prompt"),
    ({"prompt": "p", "response_0": "a", "response_1": "b", "safer_response_id": 2}, "bad_index", "safer_response_id"),
    ({"prompt": "p", "response_0": "a", "response_1": None, "better_response_id": 0}, "null", "response_1"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "objective_scores": [[1.0, float("nan")], [0.0, 1.0]]},
     "non_finite_score", "objective_scores"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "objective_scores": [[1.0, 0.5], [0.0]]}, "length_mismatch",
     "objective_scores"),
]


@pytest.fixture()
def mixed(tmp_path, tokenizer_dir):
    rows = []
    for i, (bad, _, _) in enumerate(BAD):
        rows += [dict(GOOD, prompt=f"{GOOD['prompt']} {i}"), bad]
    rows.insert(3, "")  # a blank line is a separator, not a row
    source = write_jsonl(tmp_path / "mixed.jsonl", rows)
    version = build_store([str(source)], str(tmp_path / "store"), tokenizer=tokenizer_dir, num_proc=2, progress=False)
    return source, version


def test_counts_reconcile_and_every_bad_row_is_rejected_with_its_reason(mixed):
    source, version = mixed
    counts = version.manifest["counts"]
    assert counts["rows_read"] == 2 * len(BAD) == counts["rows_written"] + counts["rows_rejected"]
    assert counts["rows_written"] == version.num_rows == len(BAD)
    rejects = version.rejects()
    assert len(rejects) == counts["rows_rejected"] == len(BAD)
    # Lines: a good row on odd lines, the bad row after it, shifted by one after the blank line 4.
    expected_lines = [2 * i + 2 + (1 if 2 * i + 2 >= 4 else 0) for i in range(len(BAD))]
    assert [r["line"] for r in rejects] == expected_lines
    assert [(r["reason"], r["field"]) for r in rejects] == [(reason, field) for _, reason, field in BAD]
    assert all(r["file"] == str(source) and r["raw"] for r in rejects)
    assert counts["rejects_by_reason"] == dict(Counter(reason for _, reason, _ in BAD))
    assert verify(version) == []


def test_rejects_file_is_one_json_object_per_line(mixed):
    _, version = mixed
    lines = (version.path / "rejects.jsonl").read_text().splitlines()
    assert len(lines) == len(BAD)
    assert all(set(json.loads(line)) == {"file", "line", "field", "reason", "detail", "raw"} for line in lines)


def test_overlong_rows_are_truncated_or_rejected(tmp_path, tokenizer_dir):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 20
    rows = [GOOD, dict(GOOD, prompt=long_prompt), dict(GOOD, prompt="p", chosen=long_prompt)]
    source = write_jsonl(tmp_path / "long.jsonl", rows)
    cut = build_store([str(source)], str(tmp_path / "a"), tokenizer=tokenizer_dir, max_prompt_tokens=16,
                      max_response_tokens=16, num_proc=1, progress=False)
    assert cut.num_rows == 3 and cut.table()["truncated"].to_pylist() == [False, True, True]
    assert max(cut.token_lengths()) <= 32 and cut.manifest["counts"]["truncated"] == 2
    strict = build_store([str(source)], str(tmp_path / "b"), tokenizer=tokenizer_dir, max_prompt_tokens=16,
                         max_response_tokens=16, truncate=False, num_proc=1, progress=False)
    assert strict.num_rows == 1
    assert [(r["line"], r["reason"]) for r in strict.rejects()] == [(2, "prompt_too_long"), (3, "response_too_long")]


def test_kind_filter_rejects_other_kinds(tmp_path, tokenizer_dir):
    rows = [GOOD, {"prompt": "p", "completion": "c", "label": True}]
    source = write_jsonl(tmp_path / "k.jsonl", rows)
    version = build_store([str(source)], str(tmp_path / "s"), tokenizer=tokenizer_dir, kind="pairwise",
                          num_proc=1, progress=False)
    assert version.num_rows == 1 and version.rejects()[0]["reason"] == "kind_mismatch"


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_format", "no_valid_rows", "bad_gzip"])
def test_fatal_problems_name_the_file(tmp_path, tokenizer_dir, case):
    path = tmp_path / {"unknown_format": "data.csv", "bad_gzip": "data.jsonl.gz"}.get(case, "data.jsonl")
    if case == "empty":
        path.write_text("\n\n")
    elif case == "unknown_format":
        path.write_text("a,b\n")
    elif case == "no_valid_rows":
        write_jsonl(path, ["not json", {"prompt": "p", "chosen": "x", "rejected": "x"}])
    elif case == "bad_gzip":
        path.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(StoreError) as error:
        build_store([str(path)], str(tmp_path / "store"), tokenizer=tokenizer_dir, num_proc=1, progress=False)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "store" / "CURRENT").exists()
