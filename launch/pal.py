"""`alignray pal add-user EXPORT --data SOURCE --user ID`: few-shot fitting of a new user's PAL mixture weights
(objective=pal_reward) from that user's pairs; the rest of the model stays frozen. The user is added to the export
and gets a judge directory, EXPORT/users/ID, that `alignray eval --judge` takes."""

from __future__ import annotations

import argparse
import tempfile
from typing import List


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray pal", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-user", help="fit a new user's weights on their pairs and add them to the export")
    add.add_argument("export", metavar="EXPORT", help="<output_dir>/export of an objective=pal_reward run")
    add.add_argument("--data", required=True, help="a store, or JSONL/Parquet pairs with user_id, holding the user's pairs")
    add.add_argument("--user", required=True, help="the user_id whose pairs are used")
    add.add_argument("--num-workers", type=int, default=2)
    add.add_argument("--address", help="Ray cluster to run on (default: an embedded local Ray)")
    return parser


def main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    import json

    from framework.cluster.launcher import ensure_ray_address, shutdown
    from framework.cluster.pal import fit_new_user
    from framework.data_prep import is_store
    from framework.store import build_store

    config = json.loads(open(f"{args.export}/pal.json").read())
    with tempfile.TemporaryDirectory(prefix="alignray-pal-") as scratch:
        store = args.data if is_store(args.data) else str(build_store(
            [args.data], scratch, tokenizer=config["encoder"], kind="pairwise", num_proc=1, progress=False).path)
        ensure_ray_address(args.address, num_cpus=max(4, args.num_workers + 2))
        try:
            result = fit_new_user(args.export, store, args.user, num_workers=args.num_workers)
        finally:
            shutdown()
    print(f"user {result['user']}: {result['pairs']} pairs, mixture weights {[round(w, 3) for w in result['weights']]}, "
          f"accuracy on them {100 * result['train_accuracy']:.1f}%; judge: {result['judge']}")
    return 0
