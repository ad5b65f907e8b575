"""ISA subsampling (issue 13): DPO on ISA 10% vs random 10% vs 100% of the demo pairs, held-out accuracy per token.

    alignray bench isa [--rows 2000] [--fraction 0.1] [--epochs 4] [--flip-rate 0.0] [--seeds 0]
                       [--workers 2] [--out DIR] [HYDRA_OVERRIDE ...]

The demo pairs (framework/demo_data.py, optionally with a `--flip-rate` share of swapped labels) are built into a
store; ISA embeds every row with the demo model on Ray workers and keeps the `--fraction` most informative rows,
random keeps a uniform subset of the same size (same seed), and the full store is the reference. Each is trained
with DPO for `--epochs` passes over its rows (2 Ray Train workers, micro-batch 8) and evaluated on 256 held-out pairs
(policy log-prob margin > 0). Reported per run: held-out accuracy before and after, training tokens (policy
tokens summed over steps) and accuracy gained per 1k training tokens. Writes isa-<date>.json and .png into
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger("alignray.bench.isa")
RESULTS = Path(__file__).resolve().parent / "results"
MICRO_BATCH = 8


def make_stores(work: Path, rows: int, fraction: float, flip_rate: float, seed: int) -> Dict[str, Any]:
    """{name: store version dir} for full / isa / random, plus the held-out JSONL and the ISA density summary."""
    from framework import demo_data
    from framework.cluster.store_passes import row_embeddings
    from framework.model.demo import demo_model_path
    from framework.store import build_store
    from framework.store.subsample import isa_scores, random_scores, select_rows, write_subsample

    train = demo_data.write_jsonl(demo_data.pairs(rows, seed=seed, flip_rate=flip_rate), work / "train.jsonl")
    held_out = demo_data.write_jsonl(demo_data.pairs(256, seed=1000 + seed), work / "eval.jsonl")
    full = build_store([str(train)], str(work / "store"), tokenizer=demo_model_path(), num_proc=1, progress=False)
    isa, density = isa_scores(row_embeddings(str(full.path), demo_model_path()), seed=seed)
    uniform = random_scores(full.num_rows, seed)
    picked = {name: write_subsample(full, select_rows(scores, fraction), scores, {"method": name, "fraction": fraction,
                                                                                  "seed": seed})
              for name, scores in (("isa", isa), ("random", uniform))}
    return {"paths": {"full": str(full.path), **{k: str(v.path) for k, v in picked.items()}},
            "rows": {"full": full.num_rows, **{k: v.num_rows for k, v in picked.items()}},
            "eval": str(held_out), "density": density}


def train_one(name: str, store: str, rows: int, epochs: int, workers: int, work: Path, extra: List[str]) -> Dict[str, Any]:
    from framework.config import compose_config
    from framework.run import train

    steps = max(2, math.ceil(epochs * rows / (MICRO_BATCH * workers)))
    output = work / "runs" / name
    summary = train(compose_config([
        "objective=dpo", f"data.train={store}", f"data.eval={work / 'eval.jsonl'}", f"train.max_steps={steps}",
        f"train.warmup_steps={min(10, steps // 5)}", f"train.micro_batch_size={MICRO_BATCH}", "train.export=false",
        f"cluster.num_workers={workers}", "cluster.cpus_per_worker=1", f"output_dir={output}", *extra]))
    metrics = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines() if line.strip()]
    tokens = int(sum(r.get("tokens", 0) for r in metrics if "loss" in r))
    start, end = summary["eval_accuracy_start"], summary["eval_accuracy_end"]
    return {"name": name, "rows": rows, "steps": steps, "train_tokens": tokens, "accuracy_start": start,
            "accuracy_end": end, "gain_per_1k_tokens": round(1000 * (end - start) / max(tokens, 1), 6),
            "reward_accuracy_end": summary["eval_reward_accuracy_end"], "wall_time_s": summary["wall_time_s"]}


def plot(runs: List[Dict[str, Any]], path: Path, title: str) -> Path:
    from benchmarks._plots import Bars, Lines, Series, chart

    colors = {"isa": "tab:green", "random": "tab:gray", "full": "tab:blue"}
    color = [colors[r["name"].split("-")[0]] for r in runs]
    points = Lines([Series(r["name"], [r["train_tokens"]], [r["accuracy_end"]], c) for r, c in zip(runs, color)],
                   xlabel="training tokens", ylabel="held-out accuracy after training", xlog=True, points=True,
                   extra={"s": 50})
    gains = Bars([r["name"] for r in runs], [r["gain_per_1k_tokens"] for r in runs], color,
                 title="accuracy gain per 1k training tokens")
    return chart(path, title, [points, gains], figsize=(11, 4))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench isa", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--flip-rate", type=float, default=0.0, help="share of training pairs with swapped labels")
    parser.add_argument("--seeds", default="0", help="comma-separated data/selection seeds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", help=f"directory for the JSON and PNG (default {RESULTS})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every training run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks._harness import environment
    from framework.cluster.launcher import ensure_ray_address, shutdown

    ensure_ray_address(None, num_cpus=max(4, args.workers + 2))
    runs, selections = [], {}
    try:
        for seed in [int(s) for s in args.seeds.split(",")]:
            work = Path(tempfile.mkdtemp(prefix=f"alignray-bench-isa-{seed}-"))
            stores = make_stores(work, args.rows, args.fraction, args.flip_rate, seed)
            selections[seed] = {"rows": stores["rows"], "density": stores["density"]}
            for name in ("isa", "random", "full"):
                run = train_one(name, stores["paths"][name], stores["rows"][name], args.epochs, args.workers, work,
                                args.overrides)
                runs.append(dict(run, name=f"{name}-s{seed}", method=name, seed=seed))
                log.info("%s seed %d: %d rows, %d tokens, accuracy %.3f -> %.3f", name, seed, run["rows"],
                         run["train_tokens"], run["accuracy_start"], run["accuracy_end"])
    finally:
        shutdown()
    stamp = dt.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    png = plot(runs, out / f"isa-{stamp}.png", f"DPO on ISA {args.fraction:.0%} vs random {args.fraction:.0%} vs "
               f"100% of {args.rows} demo pairs, {args.epochs} epochs · {stamp}")
    record = {"benchmark": "isa", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "config": {"rows": args.rows, "fraction": args.fraction, "epochs": args.epochs,
                         "flip_rate": args.flip_rate, "seeds": args.seeds, "workers": args.workers,
                         "micro_batch": MICRO_BATCH, "overrides": args.overrides},
              "selections": selections, "runs": runs, "png": str(png), "environment": environment()}
    path = out / f"isa-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for run in runs:
        print(f"{run['name']:<10} rows {run['rows']:>5}  tokens {run['train_tokens']:>8}  accuracy "
              f"{run['accuracy_start']:.3f} -> {run['accuracy_end']:.3f}  gain/1k tokens {run['gain_per_1k_tokens']:.5f}")
    print(f"wrote {path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
