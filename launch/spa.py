"""`alignray spa [--seed-pairs SOURCE] [--prompts SOURCE] [--rounds R] --out DIR [-- train overrides]`: SPA
self-annotated preference rounds (see framework/cluster/spa.py). Without --seed-pairs/--prompts it runs on the
demo task: a small seed of labelled demo pairs, unlabelled demo prompts and the demo held-out pairs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray spa", description=__doc__.split("\n")[0])
    parser.add_argument("--seed-pairs", metavar="SOURCE", help="labelled pairs (JSONL/Parquet/store); default: demo")
    parser.add_argument("--prompts", metavar="SOURCE", help="unlabelled prompts (any `alignray generate` source)")
    parser.add_argument("--out", required=True, metavar="DIR", help="rounds, store and spa.json go here")
    parser.add_argument("--rounds", type=int, default=3, help="SPA rounds after round 0 (DPO on the seed)")
    parser.add_argument("--seed-rows", type=int, default=64, help="demo only: labelled seed pairs")
    parser.add_argument("--prompt-rows", type=int, default=192, help="demo only: unlabelled prompts (all rounds)")
    parser.add_argument("--beta", type=float, default=0.1, help="β of the labelling implicit reward")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (row i of round r: seed + 1000r + i)")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray tasks for sampling and labelling")
    parser.add_argument("overrides", nargs="*", help="`alignray train` overrides for every round (after --)")
    return parser


def main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    from framework import demo_data
    from framework.cluster.generate import read_prompts
    from framework.cluster.launcher import shutdown
    from framework.cluster.spa import run_rounds
    from framework.errors import UserError

    if args.rounds < 1 or args.beta <= 0 or args.max_new_tokens < 1:
        raise UserError(f"--rounds={args.rounds} --beta={args.beta} --max-new-tokens={args.max_new_tokens}",
                        "need rounds >= 1, beta > 0 and max-new-tokens >= 1")
    out = Path(args.out).resolve()
    overrides = list(args.overrides)
    seed_pairs, prompts = args.seed_pairs, args.prompts
    if seed_pairs is None:
        seed_pairs = str(demo_data.write_jsonl(demo_data.pairs(args.seed_rows, seed=11), out / "data" / "seed.jsonl"))
        if not any(o.startswith("data.eval=") for o in overrides):
            held_out = demo_data.write_jsonl(demo_data.pairs(256, seed=2), out / "data" / "eval.jsonl")
            overrides.append(f"data.eval={held_out}")
    if prompts is None:
        prompts = str(demo_data.write_jsonl(demo_data.pairs(args.prompt_rows, seed=12), out / "data" / "prompts.jsonl"))
    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}
    try:
        records = run_rounds(seed_pairs, read_prompts(prompts), rounds=args.rounds, out=out, overrides=overrides,
                             beta=args.beta, sampling=sampling, num_workers=args.num_workers)
    finally:
        shutdown()
    for record in records:
        accuracy = record["eval_accuracy"]
        print(f"round {record['round']}: held-out accuracy {'n/a' if accuracy is None else f'{accuracy:.3f}'}"
              f"  train {record['train']}  export {record['export']}")
    print(f"wrote {out / 'spa.json'}")
    return 0
