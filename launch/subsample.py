"""`alignray store subsample STORE --method isa|random --fraction F [--model M] [--seed S]`: write a new store
version holding a subset of the rows with their scores (framework/store/subsample.py). ISA embeds the rows
on Ray workers (embedded local Ray, or `--address`); `random` needs no model. Same inputs, same rows."""

from __future__ import annotations

import argparse
from typing import Any, List


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray store subsample")
    parser.add_argument("path", metavar="STORE", help="store root or version directory")
    parser.add_argument("--method", choices=["isa", "random"], default="isa")
    parser.add_argument("--fraction", type=float, required=True, help="share of rows kept, in (0, 1]")
    parser.add_argument("--model", help="embedding model for ISA (default: the demo model)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the mixture's EM start, or the random draw")
    parser.add_argument("--max-length", type=int, default=128, help="tokens embedded per prompt + response")
    parser.add_argument("--components", type=int, default=2, help="Gaussian mixture components (ISA)")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray tasks to split the rows over")
    parser.add_argument("--address", help="Ray cluster to run on (default: an embedded local Ray)")
    return parser


def main(argv: List[str]) -> int:
    args = _parser().parse_args(argv[1:])
    from framework.store import open_store
    from framework.store.subsample import check_fraction, random_scores, select_rows, write_subsample

    version = open_store(args.path)  # a missing store or a bad fraction fails here, before Ray starts
    check_fraction(args.fraction)
    info = {"method": args.method, "fraction": args.fraction, "seed": args.seed}
    if args.method == "random":
        scores = random_scores(version.num_rows, args.seed)
    else:
        scores, info["density"] = _isa(args, version)
    chosen = select_rows(scores, args.fraction)
    written = write_subsample(version, chosen, scores, info)
    print(f"wrote {written.path} ({written.num_rows} of {version.num_rows} rows, {args.method})")
    return 0


def _isa(args: argparse.Namespace, version: Any) -> tuple:
    """(ISA scores, the density summary for the manifest) from row embeddings computed on Ray."""
    from framework.cluster import store_passes
    from framework.cluster.launcher import ensure_ray_address
    from framework.model.demo import demo_model_path
    from framework.model.loading import check_model_source, model_fingerprint
    from framework.store.subsample import isa_scores

    model = args.model or demo_model_path()
    check_model_source(model, "--model")
    ensure_ray_address(args.address, num_cpus=max(4, args.num_workers + 2))
    embeddings = store_passes.row_embeddings(str(version.path), model, max_length=args.max_length,
                                             num_workers=args.num_workers)
    scores, density = isa_scores(embeddings, components=args.components, seed=args.seed)
    return scores, dict(density, model=model, fingerprint=model_fingerprint(model), max_length=args.max_length)
