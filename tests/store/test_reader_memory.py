"""A worker reading a store several times larger than its memory budget keeps a flat resident set."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from framework.store.synthetic import synthetic_store

BUDGET_MB = 96  # the reader hands pages back after 64 MB (version.DROP_PAGES_AFTER_BYTES)
READER = textwrap.dedent("""
    import json, sys
    import pyarrow.compute as pc
    from framework.store import EpochSampler, open_store

    def rss_mb():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}

    version = open_store(sys.argv[1])
    sampler = EpochSampler(version.num_rows, rank=0, world_size=1, batch_size=32, seed=0)
    batches = sampler.plan(0)
    samples, tokens = [], 0
    for step, batch in enumerate(batches):
        rows = [i for i, pad in zip(batch.indices, batch.is_padding) if not pad]
        table = version.take(rows, columns=["prompt_ids", "response_ids"])
        # Read every token id (like a collate into tensors would), not just the list lengths.
        tokens += pc.sum(pc.list_flatten(pc.list_flatten(table["response_ids"])).cast("int64")).as_py()
        samples.append(rss_mb())  # every step; the first one, after one batch, is the baseline
    print(json.dumps({"samples": samples, "tokens": tokens, "batches": len(batches)}))
""")


def test_rss_stays_flat_while_reading_a_store_larger_than_the_budget(tmp_path: Path) -> None:
    # 24k rows x (64 + 2 x 2048) int32 tokens ≈ 385 MB over 16 shards: 4x the budget.
    version = synthetic_store(str(tmp_path / "big"), num_rows=24_000, num_shards=16, response_tokens=2048)
    store_mb = sum(s["bytes"] for s in version.manifest["shards"]) / 2**20
    assert store_mb >= 4 * BUDGET_MB
    result = subprocess.run([sys.executable, "-c", READER, str(version.path)], capture_output=True, text=True,
                            timeout=300, check=True, cwd=Path(__file__).resolve().parents[2])
    report = json.loads(result.stdout)
    import pyarrow.compute as pc

    expected = pc.sum(pc.list_flatten(pc.list_flatten(version.table()["response_ids"])).cast("int64")).as_py()
    assert report["tokens"] == expected  # every token id of the store was read, exactly once
    baseline = report["samples"][0]
    peak = max(s["VmRSS"] for s in report["samples"])
    assert peak - baseline["VmRSS"] < BUDGET_MB, report["samples"]
    # File-backed pages (the shards' mapped pages; shared libraries are in the baseline) do not pile up either.
    assert max(s["RssFile"] for s in report["samples"]) - baseline["RssFile"] < BUDGET_MB * 5 / 6, report["samples"]
