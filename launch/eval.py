"""`alignray eval MODEL --data SOURCE... [--reference MODEL] [--out DIR] [--json]`: ranking accuracy, implicit-reward
and idealized ranking accuracy, listwise/binary/per-objective figures and a judge's win rate, on Ray workers.
Writes DIR/eval.json, DIR/report.md and PNG plots (see README, "Evaluation and generation")."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray eval", description=__doc__.split("\n")[0])
    parser.add_argument("model", metavar="MODEL", help="HF model dir (e.g. <run>/export) or hub id; `demo` = demo model")
    parser.add_argument("--data", nargs="+", required=True, metavar="SOURCE",
                        help="store dirs or raw files `alignray store build` reads; `demo` = make run's held-out pairs")
    parser.add_argument("--reference", help="reference model for implicit-reward and idealized accuracy; `demo` too")
    parser.add_argument("--out", help="report directory (default: eval/ beside MODEL)")
    parser.add_argument("--json", action="store_true", help="print eval.json instead of the summary")
    parser.add_argument("--beta", type=float, default=0.1, help="β of the implicit reward and the idealized optimum")
    parser.add_argument("--alpha", type=float, default=0.9,
                        help="P(chosen ≻ rejected) for idealized accuracy where a pair carries no scores")
    parser.add_argument("--judge", metavar="RM_DIR", help="a bt_reward export: win rate of the model's samples vs the reference's")
    parser.add_argument("--judge-prompts", type=int, default=64, help="prompts the judge compares on")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="sample length for the judge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=128, help="as training's data.max_length")
    parser.add_argument("--max-prompt-length", type=int, default=64, help="as training's data.max_prompt_length")
    parser.add_argument("--address", help="Ray cluster to run on (default: an embedded local Ray)")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray tasks to split the rows over")
    return parser


def main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    from framework.cluster.evaluate import run_eval
    from framework.cluster.launcher import shutdown
    from framework.eval_report import summary_lines, write_report

    out = args.out or str(Path(args.model).resolve().parent / "eval" if Path(args.model).is_dir() else "eval")
    try:
        result = run_eval(args.model, args.data, reference=args.reference, judge_path=args.judge, beta=args.beta,
                          alpha=args.alpha, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                          num_workers=args.num_workers, judge_prompts=args.judge_prompts,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, address=args.address)
    finally:
        shutdown()
    directory = write_report(out, result)
    try:
        if args.json:
            print((directory / "eval.json").read_text(), end="")
        else:
            print("\n".join(["alignray eval", *[f"  {line}" for line in summary_lines(result)],
                             f"  report: {directory / 'report.md'}  (eval.json, plots beside it)"]))
    except BrokenPipeError:  # `alignray eval ... --json | head`
        sys.stdout = open(os.devnull, "w")
    return 0
