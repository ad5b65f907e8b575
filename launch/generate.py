"""`alignray generate MODEL --prompts SOURCE --out FILE [-n K] ...`: sample K continuations per prompt on Ray
workers, seeded per row (the output does not depend on --num-workers); JSONL with prompt, samples, settings."""

from __future__ import annotations

import argparse
from typing import List


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray generate", description=__doc__.split("\n")[0])
    parser.add_argument("model", metavar="MODEL", help="HF model dir or hub id; `demo` = the demo model")
    parser.add_argument("--prompts", required=True, metavar="SOURCE",
                        help="store dir, or JSONL/Parquet rows with a prompt (preference rows too)")
    parser.add_argument("--out", required=True, metavar="FILE", help="JSONL output (written atomically)")
    parser.add_argument("-n", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=0, help="row i draws with seed + i")
    parser.add_argument("--max-prompt-length", type=int, default=256, help="prompt tokens kept (the last ones)")
    parser.add_argument("--address", help="Ray cluster to run on (default: an embedded local Ray)")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray tasks to split the prompts over")
    return parser


def main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    from framework.cluster.evaluate import resolve_model
    from framework.cluster.generate import generate, generation_rows, read_prompts, write_jsonl_atomic
    from framework.cluster.launcher import ensure_ray_address, shutdown
    from framework.errors import UserError

    if args.n < 1 or args.max_new_tokens < 1 or args.temperature < 0:
        raise UserError(f"-n={args.n} --max-new-tokens={args.max_new_tokens} --temperature={args.temperature}: "
                        "need n >= 1, max-new-tokens >= 1 and temperature >= 0")
    model = resolve_model(args.model, "MODEL")
    prompts = read_prompts(args.prompts)
    settings = {"model": model, "n": args.n, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                "seed": args.seed, "max_prompt_length": args.max_prompt_length}
    try:
        ensure_ray_address(args.address, num_cpus=max(4, args.num_workers + 2))
        samples = generate(model, prompts, k=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seed=args.seed, max_prompt_length=args.max_prompt_length, num_workers=args.num_workers)
    finally:
        shutdown()
    write_jsonl_atomic(args.out, generation_rows(prompts, samples, settings))
    print(f"wrote {len(prompts)} prompts x {args.n} samples to {args.out}")
    return 0
