"""Store benchmark (not a test): ingest rows/s and reader batches/s against HF `datasets`, worker RSS.

    python -m benchmarks.store_bench [--rows 20000] [--num-proc 2] [--tokenizer DIR]

Ingest: the same explicit-prompt JSONL through `build_store` and through `datasets.load_dataset("json")` +
`map` tokenisation (same tokenizer, same rules, same num_proc, caching off), alternating in the same run
(the machine is shared: the best time per side is the least disturbed one). Reader:
random micro-batches of token ids from the store (EpochSampler + take) and from the `datasets` table. RSS: a
subprocess streams a synthetic store several times larger than its growth budget. Input rows come from
../shared HH-RLHF (prompt split out, repeated to --rows) or, without it, from the demo generator. Writes
benchmarks/results/store-<date>.json with versions and machine info.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part.jsonl.gz"
READER_STEPS = 2000
# What a step consumes: alignray DPO on the tiny model, 1 worker, batch 8: 10,470 tokens/s / 250 tokens per
# step ≈ 42 steps/s (results/train-throughput-2026-11-24.json; PLATFORM.md's ~15 steps/s for TRL is stale).
TRAIN_STEPS_PER_SECOND = 42.0


def _input_rows(rows: int) -> List[Dict[str, str]]:
    """Explicit prompt/chosen/rejected rows, so that `datasets` needs no prompt extraction."""
    if HH.exists():
        import gzip

        from framework.store.implicit import split_implicit_text

        base = []
        with gzip.open(HH, "rt", encoding="utf-8") as fh:
            for line in fh:
                pair = json.loads(line)
                prompt, chosen, rejected = split_implicit_text(pair["chosen"], pair["rejected"])
                if chosen.strip() and rejected.strip() and chosen != rejected:
                    base.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        source = "hh-rlhf"
    else:
        from framework.demo_data import pairs

        base, source = list(pairs(2000, seed=0)), "demo"
    print(f"input: {source}, {rows} rows", file=sys.stderr)
    return [base[i % len(base)] for i in range(rows)]


def _hf_ingest(path: str, tokenizer_dir: str, num_proc: int, cache: str) -> tuple:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_caching()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    bos, eos = [tokenizer.bos_token_id], [tokenizer.eos_token_id]

    def tokenise(batch: Dict[str, list]) -> Dict[str, list]:
        encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
        return {"prompt_ids": [bos + ids for ids in encode(batch["prompt"])],
                "chosen_ids": [ids + eos for ids in encode(batch["chosen"])],
                "rejected_ids": [ids + eos for ids in encode(batch["rejected"])]}

    start = time.perf_counter()
    dataset = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache)
    dataset = dataset.map(tokenise, batched=True, num_proc=num_proc)
    return dataset, time.perf_counter() - start


def _reader_rates(version: Any, dataset: Any, batch_size: int) -> Dict[str, float]:
    """Both readers over the same random micro-batches, alternating in blocks so load changes hit both."""
    from framework.store import EpochSampler

    sampler = EpochSampler(version.num_rows, rank=0, world_size=1, batch_size=batch_size, seed=0)
    batches = sampler.batches(0)[:READER_STEPS]
    hf = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    elapsed = {"store": 0.0, "datasets": 0.0}
    for block in range(0, len(batches), 100):
        start = time.perf_counter()
        for batch in batches[block:block + 100]:
            table = version.take(batch, columns=["prompt_ids", "response_ids"])
            table["prompt_ids"].to_pylist(), table["response_ids"].to_pylist()
        elapsed["store"] += time.perf_counter() - start
        start = time.perf_counter()
        for batch in batches[block:block + 100]:
            hf[batch]  # python lists, like the store side
        elapsed["datasets"] += time.perf_counter() - start
    ours, theirs = len(batches) / elapsed["store"], len(batches) / elapsed["datasets"]
    return {"store_batches_per_s": round(ours, 1), "datasets_batches_per_s": round(theirs, 1),
            "batch_size": batch_size, "store_vs_train_step": round(ours / TRAIN_STEPS_PER_SECOND, 1)}


def _ingest(source: Path, tmp: str, tokenizer_dir: str, num_proc: int, repeats: int) -> tuple:
    """Alternate store and `datasets` ingests `repeats` times each; best (least disturbed) time per side."""
    from framework.store import build_store

    times: Dict[str, List[float]] = {"store": [], "datasets": []}
    for attempt in range(repeats):
        start = time.perf_counter()
        version = build_store([str(source)], os.path.join(tmp, "store"), tokenizer=tokenizer_dir,
                              num_proc=num_proc, progress=False)
        times["store"].append(time.perf_counter() - start)
        dataset, seconds = _hf_ingest(str(source), tokenizer_dir, num_proc, os.path.join(tmp, f"hf{attempt}"))
        times["datasets"].append(seconds)
    return version, dataset, times


def _rss_streaming(tmp: str) -> Dict[str, Any]:
    """Stream a ~400 MB synthetic store in a fresh process; report its RSS over the epoch."""
    from framework.store.synthetic import synthetic_store

    sys.path.insert(0, str(REPO / "tests" / "store"))
    from test_reader_memory import READER

    version = synthetic_store(os.path.join(tmp, "big"), num_rows=24_000, num_shards=24, response_tokens=2048)
    out = subprocess.run([sys.executable, "-c", READER, str(version.path)], capture_output=True, text=True,
                         check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    samples = json.loads(out.stdout)["samples"]
    return {"store_mb": round(sum(s["bytes"] for s in version.manifest["shards"]) / 2**20, 1),
            "rss_mb_after_warmup": round(samples[0]["VmRSS"], 1),
            "rss_mb_peak": round(max(s["VmRSS"] for s in samples), 1),
            "rss_file_mb_after_warmup": round(samples[0]["RssFile"], 1),
            "rss_file_mb_peak": round(max(s["RssFile"] for s in samples), 1)}


def _environment() -> Dict[str, Any]:
    import datasets
    import pyarrow
    import tokenizers
    import transformers

    import framework

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    return {"python": platform.python_version(), "alignray": framework.__version__, "pyarrow": pyarrow.__version__,
            "datasets": datasets.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "cpu": cpu, "cpu_count": os.cpu_count(),
            "mem_gib": round(int(mem) / 2**20, 1), "platform": platform.platform(), "load_avg": os.getloadavg()}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating ingest runs per side (best is kept)")
    parser.add_argument("--tokenizer", help="local tokenizer dir (default: the demo tokenizer)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from framework.model.demo import demo_tokenizer_path
    from framework.store.tokenize import resolve_tokenizer_path

    tokenizer_dir = resolve_tokenizer_path(args.tokenizer or str(demo_tokenizer_path()))
    import transformers  # noqa: F401  (imported once, outside both timings: both ingests need it)
    env_before = _environment()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pairs.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in _input_rows(args.rows)))
        version, dataset, times = _ingest(source, tmp, tokenizer_dir, args.num_proc, args.repeats)
        ours, theirs = min(times["store"]), min(times["datasets"])
        result = {
            "benchmark": "store", "date": datetime.date.today().isoformat(),
            "config": {"rows": args.rows, "num_proc": args.num_proc, "repeats": args.repeats,
                       "tokenizer": tokenizer_dir, "input_bytes": source.stat().st_size,
                       "source": "hh-rlhf" if HH.exists() else "demo"},
            "ingest": {"store_rows_per_s": round(args.rows / ours, 1), "datasets_rows_per_s": round(args.rows / theirs, 1),
                       "store_seconds": [round(t, 2) for t in times["store"]],
                       "datasets_seconds": [round(t, 2) for t in times["datasets"]],
                       "store_rows_written": version.num_rows, "speedup_best": round(theirs / ours, 2)},
            "reader": _reader_rates(version, dataset, args.batch_size),
            "rss_streaming": _rss_streaming(tmp),
            "environment": env_before, "load_avg_after": os.getloadavg(),
        }
    out = REPO / "benchmarks" / "results" / f"store-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ingest", "reader", "rss_streaming")}, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
