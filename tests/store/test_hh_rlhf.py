"""Real, messy data nobody here wrote: 1,500 HH-RLHF pairs in implicit-prompt gzip JSONL (../shared)."""

from __future__ import annotations

import gzip
import json

import pytest
from store_helpers import HH_RLHF

from framework.store import build_store, verify

pytestmark = pytest.mark.skipif(not HH_RLHF.exists(), reason=f"shared HH-RLHF data not found at {HH_RLHF}")


def test_hh_rlhf_ingest_reconciles_and_splits_at_the_last_assistant_turn(tmp_path, tokenizer_dir):
    version = build_store([str(HH_RLHF)], str(tmp_path / "hh"), tokenizer=tokenizer_dir, num_proc=2,
                          progress=False)
    counts = version.manifest["counts"]
    with gzip.open(HH_RLHF, "rt", encoding="utf-8") as fh:
        raw = [json.loads(line) for line in fh if line.strip()]
    assert counts["rows_read"] == len(raw) == 1500
    assert counts["rows_written"] + counts["rows_rejected"] == 1500 and counts["rows_written"] > 1400
    # The README warns of pairs with an empty response after the shared prefix: they must be the rejects.
    assert set(counts["rejects_by_reason"]) <= {"empty", "identical_responses"}
    for row in version.rejects():
        pair = raw[row["line"] - 1]
        assert row["file"] == str(HH_RLHF) and row["field"] in ("chosen", "rejected")
        assert pair["chosen"] == pair["rejected"] or pair[row["field"]].rstrip().endswith("Assistant:")
    table = version.table(["prompt", "responses", "source_line"]).to_pylist()
    for row in table:
        pair = raw[row["source_line"] - 1]
        # (a few responses carry extra turns of their own; the split is still at the last *shared* turn)
        assert row["prompt"].endswith("\n\nAssistant:") and row["responses"][0] != row["responses"][1]
        assert [row["prompt"] + r for r in row["responses"]] == [pair["chosen"], pair["rejected"]]
    assert verify(version) == []
