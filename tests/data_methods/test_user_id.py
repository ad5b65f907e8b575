"""Ingest of the optional `user_id` column (PAL's per-annotator data): kept, validated, part of the row id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from framework.store import build_store
from framework.store.normalize import normalise

PAIR = {"prompt": "tell me about fruit .", "chosen": "apple pear .", "rejected": "drum saw ."}


def _build(tmp_path: Path, rows: list):
    from framework.model.demo import demo_tokenizer_path

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return build_store([str(source)], str(tmp_path / "store"), tokenizer=demo_tokenizer_path(), num_proc=1,
                       progress=False)


def test_user_ids_are_kept_as_text_and_bad_ones_rejected_with_their_reason(tmp_path):
    rows = [dict(PAIR, user_id="alice"), dict(PAIR, user_id=7), dict(PAIR, user_id=None), dict(PAIR),
            dict(PAIR, user_id=""), dict(PAIR, user_id=["x"]), dict(PAIR, user_id=True)]
    version = _build(tmp_path, rows)
    assert version.table()["user_id"].to_pylist() == ["alice", "7", None, None]
    rejects = [(r["line"], r["field"], r["reason"]) for r in version.rejects()]
    assert rejects == [(5, "user_id", "empty"), (6, "user_id", "not_text"), (7, "user_id", "not_text")]
    counts = version.manifest["counts"]
    assert counts["rows_read"] == counts["rows_written"] + counts["rows_rejected"] == 7


def test_row_id_separates_users_and_is_unchanged_without_one():
    plain, null = normalise(json.dumps(PAIR).encode()), normalise(json.dumps(dict(PAIR, user_id=None)).encode())
    alice, bob = (normalise(json.dumps(dict(PAIR, user_id=u)).encode()) for u in ("alice", "bob"))
    keys = ("kind", "prompt", "prompt_is_chat", "responses", "scores", "label", "objective_names",
            "objective_scores", "response_prompts")  # the id formula before user ids existed
    before = hashlib.sha256(json.dumps([plain[k] for k in keys], sort_keys=True).encode()).hexdigest()[:32]
    assert plain["row_id"] == null["row_id"] == before
    assert len({plain["row_id"], alice["row_id"], bob["row_id"]}) == 3


@pytest.mark.parametrize("kind_row", [{"prompt": "p", "completion": "c", "label": True, "user_id": "u1"},
                                      {"prompt": "p", "responses": ["a", "b", "c"], "user_id": "u1"}])
def test_user_id_is_read_for_every_feedback_kind(kind_row):
    assert normalise(json.dumps(kind_row).encode())["user_id"] == "u1"
