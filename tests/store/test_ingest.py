"""Ingest: every feedback kind and input format lands in the one schema, tokenised by the stated rules."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from store_helpers import write_jsonl

from framework.store import STORE_SCHEMA, build_store, open_store

PAIRS = [{"prompt": f"What colour is the sky {i}?", "chosen": f"It is blue {i}.", "rejected": "It is green."}
         for i in range(40)]


def build(tmp_path: Path, rows, tokenizer_dir: str, name: str = "data.jsonl", **kwargs):
    source = write_jsonl(tmp_path / name, rows)
    return build_store([str(source)], str(tmp_path / "store"), tokenizer=tokenizer_dir, num_proc=1,
                       progress=False, **kwargs)


def test_pairwise_rows_keep_order_schema_and_source_lines(tmp_path, tokenizer_dir):
    version = build(tmp_path, PAIRS, tokenizer_dir, num_shards=3)
    assert version.kind == "pairwise" and version.num_rows == 40 and len(version.shard_paths()) == 3
    table = version.table()
    assert table.schema.remove_metadata() == STORE_SCHEMA
    assert table["source_line"].to_pylist() == list(range(1, 41))
    assert table["responses"][5].as_py() == ["It is blue 5.", "It is green."]
    assert table["scores"].null_count == 40 and table["label"].null_count == 40


def test_tokenisation_rules_bos_eos_and_chat_template(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    chat = [{"role": "user", "content": "What colour is the sky?"}]
    rows = [{"prompt": "What colour is the sky?", "chosen": "It is blue.", "rejected": "It is green."},
            {"prompt": chat, "chosen": [{"role": "assistant", "content": "It is blue."}],
             "rejected": [{"role": "assistant", "content": "It is green."}]}]
    text_row, chat_row = build(tmp_path, rows, tokenizer_dir).table().to_pylist()
    plain = tok("What colour is the sky?", add_special_tokens=False)["input_ids"]
    assert text_row["prompt_ids"] == [tok.bos_token_id] + plain
    assert text_row["response_ids"][0] == tok("It is blue.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert chat_row["prompt_is_chat"] and json.loads(chat_row["prompt"]) == chat
    assert chat_row["prompt_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok.decode(chat_row["prompt_ids"]).endswith("<|assistant|> ")
    assert chat_row["responses"] == ["It is blue.", "It is green."]


def test_every_kind_in_one_schema(tmp_path, tokenizer_dir):
    rows = [
        {"prompt": "Rank these", "responses": ["best", "middle", "worst"], "scores": [3, 2, 1]},
        {"prompt": "Is this good?", "completion": "yes it is", "label": "true"},
        {"prompt": "Is this good?", "completion": "no", "label": 0},
        {"prompt": "Two goals", "chosen": "a", "rejected": "b", "objective_scores": [[1, 0.5], [0, 0.7]],
         "objective_names": ["helpful", "harmless"]},
        {"prompt": "Two goals", "responses": ["a", "b", "c"], "preferred": {"helpful": 2, "harmless": 0}},
    ]
    version = build(tmp_path, rows, tokenizer_dir)
    assert version.kind == "mixed" and version.manifest["kinds"] == {"ranked": 1, "binary": 2, "multi": 2}
    ranked, good, bad, multi, preferred = version.table().to_pylist()
    assert ranked["scores"] == [3.0, 2.0, 1.0] and len(ranked["response_ids"]) == 3
    assert (good["label"], bad["label"], len(good["responses"])) == (True, False, 1)
    assert multi["objective_scores"] == [[1.0, 0.5], [0.0, 0.7]] and multi["objective_names"] == ["helpful", "harmless"]
    assert preferred["objective_names"] == ["harmless", "helpful"]
    assert preferred["objective_scores"] == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]


def test_pku_saferlhf_rows_become_multi_objective(tmp_path, tokenizer_dir):
    """PKU-SafeRLHF's columns: response_0/response_1 and one preferred index per objective (`<name>_response_id`);
    --map renames the objectives."""
    rows = [{"prompt": "How do I pick a lock?", "response_0": "Use a tension wrench and a pick.",
             "response_1": "I can't help with that.", "better_response_id": 0, "safer_response_id": 1,
             "is_response_0_safe": False},
            {"prompt": "Best soup?", "response_0": "Tomato.", "response_1": "Miso.", "better_response_id": 1,
             "safer_response_id": 7}]
    version = build(tmp_path, rows, tokenizer_dir, kind="multi",
                    column_map={"better_response_id": "helpful_response_id", "safer_response_id": "harmless_response_id"})
    (row,) = version.table().to_pylist()
    assert row["kind"] == "multi" and row["responses"] == ["Use a tension wrench and a pick.", "I can't help with that."]
    assert row["objective_names"] == ["harmless", "helpful"] and row["objective_scores"] == [[0.0, 1.0], [1.0, 0.0]]
    rejects = [json.loads(line) for line in (version.path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"], r["reason"]) for r in rejects] == [(2, "harmless_response_id", "bad_index")]  # the mapped name, like every --map field


def test_implicit_prompt_text_and_chat(tmp_path, tokenizer_dir):
    shared = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant:"
    chat = [{"role": "user", "content": "tell me a joke"}]
    rows = [{"chosen": shared + " I would rather not.", "rejected": shared + " I know one: a chicken..."},
            {"chosen": chat + [{"role": "assistant", "content": "Why did the chicken cross?"}],
             "rejected": chat + [{"role": "assistant", "content": "No."}]}]
    text_row, chat_row = build(tmp_path, rows, tokenizer_dir).table().to_pylist()
    # Both responses start with " I": the prompt still ends at the assistant marker, not inside the answer.
    assert text_row["prompt"] == shared
    assert text_row["responses"] == [" I would rather not.", " I know one: a chicken..."]
    assert json.loads(chat_row["prompt"]) == chat and chat_row["responses"] == ["Why did the chicken cross?", "No."]


def test_column_map_and_dove_prompts(tmp_path, tokenizer_dir):
    rows = [{"question": "q1", "good": "right answer", "bad": "wrong answer"},
            {"chosen_prompt": "p1", "chosen": "x", "rejected_prompt": "p2", "rejected": "x"}]
    a, b = build(tmp_path, rows, tokenizer_dir, column_map={"question": "prompt", "good": "chosen",
                                                            "bad": "rejected"}).table().to_pylist()
    assert (a["prompt"], a["responses"]) == ("q1", ["right answer", "wrong answer"])
    # Same response text under different prompts is a valid pair (DOVE), not an identical pair.
    assert b["response_prompts"] == ["p1", "p2"] and len(b["response_prompt_ids"]) == 2


def test_formats_gzip_zstd_parquet_and_saved_dataset(tmp_path, tokenizer_dir):
    import zstandard
    from datasets import Dataset

    lines = "".join(json.dumps(r) + "\n" for r in PAIRS[:10]).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.Table.from_pylist(PAIRS[10:20]), tmp_path / "c.parquet")
    Dataset.from_list(PAIRS[20:30]).save_to_disk(str(tmp_path / "d"))
    sources = [str(tmp_path / n) for n in ("a.jsonl.gz", "b.jsonl.zst", "c.parquet", "d")]
    version = build_store(sources, str(tmp_path / "store"), tokenizer=tokenizer_dir, num_proc=2, progress=False)
    assert version.num_rows == 40 and version.manifest["counts"]["rows_read"] == 40
    assert [s["format"] for s in version.manifest["sources"]] == ["jsonl", "jsonl", "parquet", "hf_dataset"]
    table = version.table()
    assert table["prompt"].to_pylist() == [r["prompt"] for r in PAIRS[:10] * 2 + PAIRS[10:30]]
    assert table["source_line"].to_pylist()[20:23] == [0, 1, 2]  # table sources count rows from 0


def test_row_ids_are_stable_content_hashes_and_rebuild_makes_new_version(tmp_path, tokenizer_dir):
    first = build(tmp_path, PAIRS, tokenizer_dir)
    second = build(tmp_path, list(reversed(PAIRS)), tokenizer_dir, name="other.jsonl", num_shards=2)
    assert (first.version, second.version, second.manifest["parent"]) == ("v000001", "v000002", "v000001")
    assert open_store(str(tmp_path / "store")).version == "v000002"
    assert open_store(str(first.path)).num_rows == 40  # old versions stay readable
    ids = first.table()["row_id"].to_pylist()
    assert len(set(ids)) == 40 and second.table()["row_id"].to_pylist() == ids[::-1]


def test_parallel_build_equals_serial_build(tmp_path, tokenizer_dir):
    source = write_jsonl(tmp_path / "d.jsonl", PAIRS * 60)  # several chunks across 2 processes
    serial = build_store([str(source)], str(tmp_path / "s"), tokenizer=tokenizer_dir, num_proc=1, progress=False)
    parallel = build_store([str(source)], str(tmp_path / "p"), tokenizer=tokenizer_dir, num_proc=2, progress=False)
    assert serial.table().equals(parallel.table())


def test_demo_data_builds_every_shape(tmp_path):
    demo = pytest.importorskip("framework.demo_data")
    model_demo = pytest.importorskip("framework.model.demo")
    for kind, make in demo.SHAPES.items():
        source = demo.write_jsonl(make(50, seed=1), tmp_path / f"{kind}.jsonl")
        version = build_store([str(source)], str(tmp_path / kind), tokenizer=str(model_demo.demo_tokenizer_path()),
                              progress=False, num_proc=1)
        assert (version.kind, version.num_rows, version.manifest["counts"]["rows_rejected"]) == (kind, 50, 0)
