"""Reproduce two claims from the papers on the demo task (a benchmark, not a test; ~8 min on 2 CPU cores).

1. rDPO (Chowdhury et al. 2024) stays accurate where DPO degrades when 30% of the pair labels are flipped.
2. LiPO-λ (Liu et al. 2024) on ranked lists is at least as good as DPO on pairs drawn from the same lists.

All runs train the tiny demo model with 2 Ray Train workers (ZeRO-2) for the same number of steps and are scored
on the same held-out pairs: every ordered pair of held-out ranked lists (many differ by one on-topic word, which
is much harder than the demo's clean held-out pairs). Writes benchmarks/results/objective-claims-<date>.json.

    python -m benchmarks.objective_claims [--steps 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

RESULTS = Path(__file__).resolve().parent / "results"


def _run(name: str, out: Path, overrides: List[str]) -> Dict[str, float]:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from framework.config import from_dict
    from framework.run import train

    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = compose(config_name="config", overrides=[f"output_dir={out / name}", *overrides])
    summary = train(from_dict(OmegaConf.to_container(raw, resolve=True)))
    return {k: summary[k] for k in ("eval_accuracy_start", "eval_accuracy_end", "eval_reward_accuracy_end",
                                    "final_loss", "wall_time_s", "tokens_per_s")}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args(argv)

    from framework import demo_data
    from framework.cluster.launcher import shutdown

    out = Path(tempfile.mkdtemp(prefix="alignray-claims-"))
    data = out / "data"
    write = demo_data.write_jsonl
    eval_pairs = write(demo_data.pairs_from_lists(demo_data.ranked(200, seed=7), seed=0, all_pairs=True), data / "eval.jsonl")
    clean = write(demo_data.pairs(args.rows, seed=1), data / "clean.jsonl")
    noisy = write(demo_data.pairs(args.rows, seed=1, flip_rate=0.3), data / "noisy.jsonl")
    lists = write(demo_data.ranked(args.rows, seed=3), data / "lists.jsonl")
    list_pairs = write(demo_data.pairs_from_lists(demo_data.ranked(args.rows, seed=3), seed=4), data / "list_pairs.jsonl")
    common = [f"train.max_steps={args.steps}", f"data.eval={eval_pairs}", "cluster.num_workers=2"]
    runs = {
        "dpo_clean": ["objective=dpo", f"data.train={clean}"],
        "dpo_flip30": ["objective=dpo", f"data.train={noisy}"],
        "rdpo_flip30": ["objective=rdpo", "objective.label_smoothing=0.3", f"data.train={noisy}"],
        "dpo_pairs_from_lists": ["objective=dpo", f"data.train={list_pairs}", "data.kind=pairwise"],
        "lipo_lambda_lists": ["objective=lipo_lambda", f"data.train={lists}", "data.kind=ranked"],
    }
    results = {}
    try:
        for name, overrides in runs.items():
            results[name] = _run(name, out, common + overrides)
            print(name, results[name], flush=True)
    finally:
        shutdown()
    acc = {k: v["eval_accuracy_end"] for k, v in results.items()}
    claims = {
        "rdpo_vs_dpo_under_30pct_flips": {"dpo": acc["dpo_flip30"], "rdpo": acc["rdpo_flip30"],
                                          "dpo_clean": acc["dpo_clean"], "holds": acc["rdpo_flip30"] >= acc["dpo_flip30"]},
        "lipo_lists_vs_dpo_pairs": {"lipo_lambda": acc["lipo_lambda_lists"], "dpo": acc["dpo_pairs_from_lists"],
                                    "holds": acc["lipo_lambda_lists"] >= acc["dpo_pairs_from_lists"]},
    }
    import ray
    import torch

    record = {"benchmark": "objective_claims", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "config": {"steps": args.steps, "rows": args.rows, "eval": "all ordered pairs of 200 held-out lists",
                         "workers": 2, "zero_stage": 2},
              "runs": results, "claims": claims,
              "environment": {"python": sys.version.split()[0], "torch": torch.__version__, "ray": ray.__version__,
                              "machine": platform.machine(), "processor": platform.processor(),
                              "cpus": __import__("os").cpu_count()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"objective-claims-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(record, indent=2))
    print(json.dumps(claims, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
