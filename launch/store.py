"""`alignray store build|info|verify|sample ...`: build and inspect preference stores.

Fatal problems raise StoreError, which launch/cli.py prints as one line naming the file (exit 2); `verify`
finding corruption is not an input error and exits 1.
`add-reference`, `add-samples` and `add-aligned-logps` run models on Ray workers (launch/store_passes.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Dict, List, Optional

from framework.store.errors import StoreError

# Model passes run on Ray workers; their entrypoint lives with the other Ray-facing commands.
DELEGATED = {"add-reference": "launch.store_passes", "add-samples": "launch.store_passes",
             "add-aligned-logps": "launch.store_passes", "add-udm-weights": "launch.store_passes",
             "add-scores": "launch.store_passes", "subsample": "launch.subsample"}


def _column_map(pairs: List[str]) -> Dict[str, str]:
    mapping = {}
    for pair in pairs:
        source, sep, field = pair.partition("=")
        if not sep or not source or not field:
            raise StoreError(f"--map expects COL=FIELD, got {pair!r}", "e.g. --map question=prompt")
        mapping[source] = field
    return mapping


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray store", description="Build and inspect preference stores.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="ingest JSONL(.gz/.zst) / Parquet / save_to_disk datasets into a new version")
    build.add_argument("sources", nargs="+", metavar="SOURCE")
    build.add_argument("--out", required=True, help="store root (created, or extended with a new version)")
    build.add_argument("--tokenizer", help="local HF tokenizer directory (default: the built-in demo tokenizer)")
    build.add_argument("--kind", choices=["pairwise", "ranked", "binary", "multi"], help="reject rows of other kinds")
    build.add_argument("--map", action="append", default=[], metavar="COL=FIELD",
                       help="read source column COL as FIELD (prompt, chosen, rejected, responses, scores, ...)")
    build.add_argument("--objectives", type=lambda text: [n for n in text.split(",") if n], metavar="COL,COL",
                       help="score columns of one-row-per-response (HelpSteer2-style) multi data; default: the "
                            "HelpSteer2 attributes present")
    build.add_argument("--max-prompt-tokens", type=int)
    build.add_argument("--max-response-tokens", type=int)
    build.add_argument("--no-truncate", action="store_true", help="reject over-long rows instead of truncating")
    build.add_argument("--num-shards", type=int)
    build.add_argument("--num-proc", type=int)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    info = sub.add_parser("info", help="counts, token lengths, tokenizer and sources of a store version")
    info.add_argument("path", metavar="DIR")
    info.add_argument("--json", action="store_true")
    verify = sub.add_parser("verify", help="re-hash every shard against the manifest")
    verify.add_argument("path", metavar="DIR")
    verify.add_argument("--all", action="store_true", help="every version of the store, not only the current one")
    sample = sub.add_parser("sample", help="show rows decoded back to text")
    sample.add_argument("path", metavar="DIR")
    sample.add_argument("-n", type=int, default=5)
    sample.add_argument("--seed", type=int, default=0)
    for name in DELEGATED:
        sub.add_parser(name, help=f"see `alignray store {name} --help`", add_help=False)
    return parser


def _demo_tokenizer() -> str:
    from framework.model.demo import demo_tokenizer_path

    return str(demo_tokenizer_path())


def _build(args: argparse.Namespace) -> int:
    from framework.store import build_store

    tokenizer = args.tokenizer or _demo_tokenizer()  # the store itself stays data-only: no default of its own
    build_store(args.sources, args.out, tokenizer=tokenizer, kind=args.kind, column_map=_column_map(args.map),
                objectives=args.objectives, max_prompt_tokens=args.max_prompt_tokens,
                max_response_tokens=args.max_response_tokens,
                truncate=not args.no_truncate, num_shards=args.num_shards, num_proc=args.num_proc,
                progress=not args.quiet)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from framework.store import StoreVersion, open_store, verify
    from framework.store.layout import list_versions

    version = open_store(args.path)
    versions = [StoreVersion(version.root / name) for name in list_versions(version.root)] if args.all else [version]
    failed = False
    for item in versions:
        problems = verify(item)
        for problem in problems:
            print(f"alignray store verify: {problem}", file=sys.stderr)
        if not problems:
            print(f"ok: {item.path} ({len(item.manifest['shards'])} shards, {item.num_rows:,} rows)")
        failed = failed or bool(problems)
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return int(importlib.import_module(DELEGATED[argv[0]]).main(argv) or 0)
    args = _parser().parse_args(argv)
    from framework.store.show import info, sample

    commands = {"build": _build, "info": info, "verify": _verify, "sample": sample}
    try:
        return commands[args.command](args)
    except BrokenPipeError:  # `alignray store info ... | head`
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
