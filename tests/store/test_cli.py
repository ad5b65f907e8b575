"""`alignray store build|info|verify|sample` through the real console entry point, and add_columns versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from store_helpers import write_jsonl

from framework.store import StoreError, add_columns, open_store, verify
from test_validation import BAD, GOOD

REPO = Path(__file__).resolve().parents[2]


def alignray(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "launch.cli", "store", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("cli")
    rows = [dict(GOOD, prompt=f"question {i}") for i in range(30)] + [bad for bad, _, _ in BAD]
    source = write_jsonl(tmp / "mixed.jsonl", rows)
    result = alignray("build", str(source), "--out", str(tmp / "store"), "--tokenizer", tokenizer_dir,
                      "--num-shards", "3", "--num-proc", "2")
    assert result.returncode == 0, result.stderr
    return tmp / "store", result


def test_build_reports_rows_per_second(built):
    _, result = built
    assert "rows/s" in result.stderr and f"{30 + len(BAD)} rows read, 30 written, {len(BAD)} rejected" in result.stderr


def test_info_json_counts_reconcile(built):
    store, _ = built
    info = json.loads(alignray("info", str(store), "--json").stdout)
    assert (info["rows_read"], info["rows_written"], info["rows_rejected"]) == (30 + len(BAD), 30, len(BAD))
    assert info["version"] == info["current"] == "v000001" and info["num_shards"] == 3
    assert sum(info["rejects_by_reason"].values()) == len(BAD)
    text = alignray("info", str(store)).stdout
    assert f"rows read {30 + len(BAD)}  written 30  rejected {len(BAD)}" in text


def test_sample_decodes_rows_back_to_text(built):
    store, _ = built
    result = alignray("sample", str(store), "-n", "2")
    assert result.returncode == 0 and result.stdout.count("--- row") == 2
    assert "question" in result.stdout and "It is blue.</s>" in result.stdout


def test_verify_passes_then_names_the_corrupted_shard(built, tmp_path):
    store, _ = built
    assert alignray("verify", str(store)).returncode == 0
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    shard = copy / "v000001" / "shards" / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = alignray("verify", str(copy))
    assert result.returncode == 1 and "shard-00001.arrow" in result.stderr and "shard-00000" not in result.stderr
    assert alignray("verify", "--all", str(copy)).returncode == 1


@pytest.mark.parametrize("args", [["build", "missing.jsonl", "--out", "x"], ["info", "not-a-store"]])
def test_fatal_errors_are_one_line_without_traceback(args, tmp_path):
    result = alignray(*[str(tmp_path / a) if a in ("missing.jsonl", "x", "not-a-store") else a for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alignray store: error:") and str(tmp_path) in lines[0]


def test_add_columns_writes_a_new_current_version(built, tmp_path):
    store, _ = built
    subprocess.run(["cp", "-r", str(store), str(tmp_path / "s")], check=True)
    base = open_store(str(tmp_path / "s"))
    logps = [[-1.0 * i, -2.0 * i] for i in range(base.num_rows)]
    lengths = pa.array([[5, 6]] * base.num_rows, pa.list_(pa.int32()))
    added = add_columns(base, {"ref_logps": logps, "ref_lengths": lengths}, note="add-reference",
                        extra_manifest={"reference": {"fingerprint": "abc"}})
    assert (added.version, added.manifest["parent"], open_store(str(tmp_path / "s")).version) == (
        "v000002", "v000001", "v000002")
    assert added.manifest["reference"] == {"fingerprint": "abc"} and added.manifest["counts"] == base.manifest["counts"]
    assert added.take([7, 3])["ref_logps"].to_pylist() == [logps[7], logps[3]]
    assert added.table().drop_columns(["ref_logps", "ref_lengths"]).equals(base.table())
    assert verify(added) == [] and added.rejects() == base.rejects()
    assert np.array_equal(added.token_lengths(), base.token_lengths())
    with pytest.raises(StoreError, match="values for"):
        add_columns(base, {"ref_logps": logps[:-1]}, note="short")


def test_map_option_and_in_process_entrypoint(tmp_path, tokenizer_dir, capsys):
    from launch.store import main

    source = write_jsonl(tmp_path / "renamed.jsonl", [{"q": "question", "good": "yes", "bad": "no"}])
    args = ["build", str(source), "--out", str(tmp_path / "s"), "--tokenizer", tokenizer_dir, "--quiet",
            "--map", "q=prompt", "--map", "good=chosen", "--map", "bad=rejected", "--num-proc", "1"]
    assert main(args) == 0
    assert open_store(str(tmp_path / "s")).table()["responses"].to_pylist() == [["yes", "no"]]
    assert main(["info", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_written"] == 1
    with pytest.raises(StoreError, match="COL=FIELD"):
        main(args[:-2] + ["--map", "nonsense"])


def test_store_version_pickles_after_reading(built):
    import pickle

    store, _ = built
    version = open_store(str(store))
    first = version.take([3, 1])
    clone = pickle.loads(pickle.dumps(version))
    assert clone.take([3, 1]).equals(first) and clone.num_rows == version.num_rows


def test_take_small_and_large_requests_match_a_plain_take(tmp_path):
    from framework.store.synthetic import synthetic_store

    version = synthetic_store(str(tmp_path / "s"), num_rows=3000, num_shards=3, response_tokens=4)
    full = version.table()
    rng = np.random.default_rng(0)
    for size in (1, 7, 512, 513, 2999):  # both sides of SLICE_ROWS, rows from every shard, repeats allowed
        rows = rng.integers(0, version.num_rows, size)
        assert version.take(rows).to_pylist() == full.take(pa.array(rows)).to_pylist()
        assert version.take(rows, columns=["row_id"]).column_names == ["row_id"]
    assert version.take([]).num_rows == 0
    with pytest.raises(IndexError):
        version.take([version.num_rows])
