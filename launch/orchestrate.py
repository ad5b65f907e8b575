"""`alignray orchestrate train|weights`: the Preference Orchestrator's adapter (PRO) on its own.

  alignray orchestrate train --data STORE_OR_FILE --out DIR [--encoder DIR] [--temperature 0.1] [--epochs 3]
  alignray orchestrate weights DIR [PROMPT ...] [--prompts FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import List


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray orchestrate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fit the adapter on a multi-objective store or raw file")
    train.add_argument("--data", required=True, help="a store, or raw multi-objective rows (JSONL/Parquet/...)")
    train.add_argument("--out", required=True, help="adapter directory to write")
    train.add_argument("--encoder", help="HF encoder directory (default: a tiny encoder built offline)")
    train.add_argument("--temperature", type=float, default=0.1, help="T of the targets softmax(z(y+)/T)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    weights = sub.add_parser("weights", help="print the adapter's objective weights for prompts")
    weights.add_argument("adapter", metavar="DIR")
    weights.add_argument("prompts", nargs="*", metavar="PROMPT")
    weights.add_argument("--prompts-file", help="one prompt per line (or JSONL with a `prompt` field)")
    weights.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    return parser


def main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    return _train(args) if args.command == "train" else _weights(args)


def _train(args: argparse.Namespace) -> int:
    from framework.data_prep import is_store
    from framework.errors import UserError
    from framework.model.demo import demo_tokenizer_path
    from framework.model.orchestrator import train_orchestrator
    from framework.store import build_store

    if not Path(args.data).exists():
        raise UserError(f"--data {args.data}: no such file or directory", "pass a store or a multi-objective JSONL/Parquet file")
    if args.encoder and not (Path(args.encoder) / "config.json").exists():
        raise UserError(f"--encoder {args.encoder}: not an HF model directory (no config.json)")
    with tempfile.TemporaryDirectory() as tmp:
        store = args.data
        if not is_store(store):  # the adapter reads prompt texts and scores: any tokenizer will do for the store
            store = str(build_store([args.data], str(Path(tmp) / "store"), tokenizer=demo_tokenizer_path(), kind="multi").path)
        info = train_orchestrator(store, args.out, encoder=args.encoder, temperature=args.temperature,
                                  epochs=args.epochs, lr=args.lr, seed=args.seed)
    m = info["metrics"]
    print(f"orchestrator for {', '.join(info['objective_names'])} -> {args.out}: held-out KL {m['heldout_kl']:.4f} "
          f"(constant predictor {m['heldout_kl_constant']:.4f}), top-1 agreement {m['heldout_top1']:.3f} "
          f"on {m['heldout_rows']} prompts; {info['rows_with_overall_label']}/{info['rows']} rows had an overall label")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from framework.errors import UserError
    from framework.model.orchestrator import LoadedOrchestrator, round_weights, weights_line

    prompts = list(args.prompts)
    if args.prompts_file:
        for line in Path(args.prompts_file).read_text().splitlines():
            if line.strip():
                prompts.append(json.loads(line)["prompt"] if line.lstrip().startswith("{") else line)
    if not prompts:
        raise UserError("no prompts given", "pass PROMPT arguments or --prompts-file FILE")
    orchestrator = LoadedOrchestrator(args.adapter)
    for prompt, w in zip(prompts, orchestrator.weights(prompts).tolist()):
        rounded = round_weights(w)
        if args.json:
            print(json.dumps({"prompt": prompt, "weights": dict(zip(orchestrator.names, rounded)),
                              "context_line": weights_line(orchestrator.names, rounded).rstrip("\n")}))
        else:
            print(f"{weights_line(orchestrator.names, rounded).rstrip()}  {prompt}")
    sys.stdout.flush()
    return 0
