"""`alignray store add-reference|add-samples|add-aligned-logps|add-udm-weights DIR --model PATH ...` and
`alignray store add-scores DIR --reward-model PATH --name NAME`: model passes over a store on Ray workers
(embedded local Ray, or `--address`), each writing a new store version."""

from __future__ import annotations

import argparse
from typing import List


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"alignray store {command}")
    parser.add_argument("path", metavar="DIR", help="store root or version directory")
    if command == "add-scores":
        parser.add_argument("--reward-model", required=True, help="a reward model export (objective=bt_reward)")
        parser.add_argument("--name", required=True, help="the objective its scores become")
        parser.add_argument("--replace", action="store_true", help="overwrite an existing objective of that name")
    else:
        parser.add_argument("--model", required=True, action="append" if command == "add-aligned-logps" else "store",
                            help="local HF model dir or hub id" + (" (repeat for each aligned LM)" if command == "add-aligned-logps" else ""))
    parser.add_argument("--num-workers", type=int, default=2, help="Ray tasks to split the rows over")
    parser.add_argument("--address", help="Ray cluster to run on (default: an embedded local Ray)")
    if command in ("add-reference", "add-scores"):
        parser.add_argument("--max-length", type=int, default=128, help="must match training's data.max_length")
        parser.add_argument("--max-prompt-length", type=int, default=64, help="must match data.max_prompt_length")
    if command == "add-reference":
        parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
        parser.add_argument("--padded", action="store_true",
                            help="one padded row per response instead of shared-prompt packed rows (same values)")
    if command == "add-samples":
        parser.add_argument("-k", type=int, default=4, help="samples per prompt")
        parser.add_argument("--max-new-tokens", type=int, default=32)
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--seed", type=int, default=0)
    if command == "add-udm-weights":
        parser.add_argument("--sample-size", type=int, default=1024, help="prompts per class to fit the classifier on")
        parser.add_argument("--seed", type=int, default=0, help="seed of that sample")
        parser.add_argument("--max-prompt-length", type=int, default=64, help="prompt tokens embedded (the last ones)")
    return parser


def main(argv: List[str]) -> int:
    command, args = argv[0], _parser(argv[0]).parse_args(argv[1:])
    from framework.cluster import store_passes
    from framework.cluster.launcher import ensure_ray_address
    from framework.model.loading import check_model_source
    from framework.store import open_store

    open_store(args.path)  # a missing store or model fails here, before Ray starts
    if command == "add-scores":  # so do a non-reward model, a name clash and rows of another kind
        store_passes.check_add_scores(open_store(args.path), args.reward_model, args.name, args.replace)
    else:
        for model in args.model if isinstance(args.model, list) else [args.model]:
            check_model_source(model, "--model")
    if command == "add-udm-weights":  # so does a store that is not binary or holds one class
        store_passes.udm_sample(open_store(args.path), args.sample_size, args.seed)
    ensure_ray_address(args.address, num_cpus=max(4, args.num_workers + 2))
    if command == "add-reference":
        version = store_passes.add_reference(args.path, args.model, max_length=args.max_length,
                                             max_prompt_length=args.max_prompt_length, dtype=args.dtype,
                                             num_workers=args.num_workers, packed=not args.padded)
    elif command == "add-samples":
        version = store_passes.add_samples(args.path, args.model, k=args.k, max_new_tokens=args.max_new_tokens,
                                           temperature=args.temperature, seed=args.seed, num_workers=args.num_workers)
    elif command == "add-scores":
        version = store_passes.add_scores(args.path, args.reward_model, args.name, replace=args.replace,
                                          max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                                          num_workers=args.num_workers)
    elif command == "add-udm-weights":
        version = store_passes.add_udm_weights(args.path, args.model, sample_size=args.sample_size, seed=args.seed,
                                               max_prompt_length=args.max_prompt_length, num_workers=args.num_workers)
        udm = version.manifest["udm"]
        print(f"UDM classifier accuracy {udm['accuracy']:.3f} (balanced, on {udm['sample_desirable']} desirable + "
              f"{udm['sample_undesirable']} undesirable prompts); weights in [{udm['weight_min']:.3g}, {udm['weight_max']:.3g}]")
    else:
        version = store_passes.add_aligned_logps(args.path, args.model, num_workers=args.num_workers)
    print(f"wrote {version.path} ({version.num_rows} rows)")
    return 0
