"""`alignray select POLICY --scorer NAME=RM [--scorer NAME=RM ...] --weights W1,W2 --prompts SOURCE --out FILE`:
robust preference selection (RPS, see framework/cluster/select.py) on Ray workers: sample from the weights-in-context
POLICY at directions around --weights, score with one `bt_reward` export per objective, keep argmax of vᵀr.
`--radius 0` is the baseline (every candidate sampled at the requested direction)."""

from __future__ import annotations

import argparse
import math
from typing import List


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray select", description=__doc__.split("\n")[0])
    parser.add_argument("policy", metavar="POLICY", help="export of a PRO in_context=true run (HF dir)")
    parser.add_argument("--scorer", action="append", required=True, metavar="NAME=RM",
                        help="objective name (as in the policy's weights line) = its bt_reward export; repeat per objective")
    parser.add_argument("--weights", required=True, help="requested direction, one weight per --scorer (e.g. 0.7,0.3)")
    parser.add_argument("--prompts", required=True, metavar="SOURCE", help="store dir or JSONL/Parquet rows with a prompt")
    parser.add_argument("--out", required=True, metavar="FILE", help="JSONL: selected response and all candidates per prompt")
    parser.add_argument("--directions", type=int, default=5, help="directions sampled (the requested one included)")
    parser.add_argument("--radius", type=float, default=math.pi / 8, help="largest angle from the requested direction")
    parser.add_argument("--per-direction", type=int, default=2, help="samples per direction")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompt-length", type=int, default=64, help="prompt tokens incl. the weights line")
    parser.add_argument("--address", help="Ray cluster to run on (default: an embedded local Ray)")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray tasks to split the prompts over")
    return parser


def _scorers(specs: List[str]) -> tuple:
    from framework.cluster.evaluate import resolve_model
    from framework.errors import UserError

    pairs = [spec.split("=", 1) for spec in specs]
    if any(len(p) != 2 or not p[0] for p in pairs):
        raise UserError(f"--scorer {specs}: each must be NAME=PATH", "e.g. --scorer topic=runs/rm-topic/export")
    return [p[0] for p in pairs], [resolve_model(p[1], f"--scorer {p[0]}") for p in pairs]


def main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    from framework.cluster.evaluate import resolve_model
    from framework.cluster.generate import read_prompts, write_jsonl_atomic
    from framework.cluster.launcher import ensure_ray_address, shutdown
    from framework.cluster.select import select
    from framework.errors import UserError

    names, scorers = _scorers(args.scorer)
    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        raise UserError(f"--weights {args.weights!r} is not a comma-separated list of numbers", "e.g. --weights 0.7,0.3") from None
    if len(weights) != len(names) or min(weights) < 0 or sum(weights) <= 0:
        raise UserError(f"--weights {args.weights}: need {len(names)} non-negative weights (one per --scorer), not all 0")
    if args.directions < 1 or args.per_direction < 1 or args.radius < 0:
        raise UserError("--directions and --per-direction must be >= 1 and --radius >= 0")
    policy, prompts = resolve_model(args.policy, "POLICY"), read_prompts(args.prompts)
    try:
        ensure_ray_address(args.address, num_cpus=max(4, args.num_workers + 2))
        records = select(policy, scorers, names, weights, prompts, directions=args.directions, radius=args.radius,
                         per_direction=args.per_direction, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, seed=args.seed, max_prompt_length=args.max_prompt_length,
                         num_workers=args.num_workers)
    finally:
        shutdown()
    write_jsonl_atomic(args.out, records)
    mean = sum(r["utility"] for r in records) / len(records)
    print(f"selected 1 of {args.directions * args.per_direction} candidates for {len(records)} prompts "
          f"(mean v·r {mean:.4f}) -> {args.out}")
    return 0
