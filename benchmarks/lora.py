"""LoRA against full fine-tuning (issue 12): trainable parameters, memory per rank and tokens/s at ZeRO-2 and 3.

    alignray bench lora [--steps 12] [--hidden 512] [--layers 8] [--rank 16] [--targets q_proj,v_proj]
                        [--workers 2] [--repeats 2] [--out DIR] [HYDRA_OVERRIDE ...]

DPO on the demo pairs with a ~20M-parameter Llama built from a config (hidden 512, 8 layers, the demo tokenizer),
2 Ray Train workers, fp32, live reference. Full fine-tuning loads a second copy of the weights as the reference;
LoRA uses the frozen base with its adapters off. Per run and rank: the peak RSS of the worker process and the bytes
of weights and optimizer state it holds (`memory/rank*.json` of the run); tokens/s is the mean over the second half
of the steps (policy tokens, the same count for both), best of interleaved repeats. Writes lora-<date>.json and
.png into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger("alignray.bench.lora")
RESULTS = Path(__file__).resolve().parent / "results"


def configurations(rank: int, targets: str) -> List[Dict[str, Any]]:
    lora = [f"model.lora.r={rank}"] + ([f"model.lora.target_modules=[{targets}]"] if targets else [])
    return [{"name": f"{mode}-zero{zero}", "mode": mode, "zero": zero,
             "overrides": [f"deepspeed.zero_stage={zero}", *(lora if mode == "lora" else [])]}
            for zero in (2, 3) for mode in ("full", "lora")]


def train_one(run: Dict[str, Any], model: str, work: Path, common: List[str]) -> Dict[str, Any]:
    from framework.config import compose_config
    from framework.run import train

    output = work / run["name"]
    summary = train(compose_config([*common, f"model.path={model}", f"output_dir={output}", *run["overrides"]]))
    info = json.loads((output / "run_info.json").read_text())
    memory = [json.loads(p.read_text()) for p in sorted((output / "memory").glob("rank*.json"))]
    return {**run, "trainable_params": info["trainable_params"], "total_params": info["total_params"],
            "reference_from": info["reference_from"], "tokens_per_s": summary["tokens_per_s"],
            "wall_time_s": summary["wall_time_s"], "final_loss": summary["final_loss"], "memory_per_rank": memory,
            "peak_rss_mib": max(m["peak_rss_mib"] for m in memory),
            "model_state_mib": max(m["weights_mib"] + m["optimizer_mib"] for m in memory)}


def ratios(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """LoRA / full at each ZeRO stage."""
    by = {(r["mode"], r["zero"]): r for r in runs}
    out = {}
    for zero in (2, 3):
        full, lora = by.get(("full", zero)), by.get(("lora", zero))
        if full and lora:
            out[f"zero{zero}"] = {key: round(lora[key] / full[key], 3)
                                  for key in ("trainable_params", "model_state_mib", "peak_rss_mib", "tokens_per_s")}
    return out


def plot(runs: List[Dict[str, Any]], path: Path, title: str) -> Path:
    from benchmarks._plots import Bars, bar_chart

    names = [r["name"] for r in runs]
    colors = ["tab:gray" if r["mode"] == "full" else "tab:green" for r in runs]
    panels = [("model_state_mib", "weights + optimizer state per rank (MiB)"),
              ("peak_rss_mib", "peak RSS per rank (MiB)"), ("tokens_per_s", "tokens/s (all workers)")]
    return bar_chart(path, title, [Bars(names, [r[key] for r in runs], colors, title=label) for key, label in panels],
                     figsize=(13, 4))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench lora", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="", help="comma-separated LoRA target modules (default: peft's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the fastest counts")
    parser.add_argument("--out", help=f"directory for the JSON and PNG (default {RESULTS})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks._harness import environment
    from framework.cluster.launcher import shutdown
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    work = Path(tempfile.mkdtemp(prefix="alignray-bench-lora-"))
    model = str(build_tiny_llama(work / "model", demo_tokenizer_path(), hidden_size=args.hidden, layers=args.layers))
    common = ["objective=dpo", f"train.max_steps={args.steps}", "train.warmup_steps=2", "train.micro_batch_size=8",
              "train.eval_at_start=false", "train.eval_at_end=false", "train.export=false", "data.demo_train_rows=512",
              f"cluster.num_workers={args.workers}", "cluster.cpus_per_worker=1", *args.overrides]
    repeats: Dict[str, List[Dict[str, Any]]] = {}
    try:
        for repeat in range(args.repeats):  # interleaved: load from other jobs hits every configuration alike
            for run in configurations(args.rank, args.targets):
                done = train_one({**run, "repeat": repeat}, model, work / f"r{repeat}", common)
                repeats.setdefault(run["name"], []).append(done)
                log.info("%s #%d: %d trainable, %.0f MiB model state/rank, %.0f MiB peak RSS/rank, %.0f tokens/s",
                         run["name"], repeat, done["trainable_params"], done["model_state_mib"],
                         done["peak_rss_mib"], done["tokens_per_s"])
    finally:
        shutdown()
    # Per configuration the fastest repeat (the least disturbed); memory is the same in every repeat.
    runs = [{**max(done, key=lambda r: r["tokens_per_s"]), "tokens_per_s_repeats": [r["tokens_per_s"] for r in done]}
            for done in repeats.values()]
    stamp = dt.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    params = runs[0]["total_params"]
    png = plot(runs, out / f"lora-{stamp}.png",
               f"DPO, {params / 1e6:.0f}M Llama, {args.workers} workers, LoRA r={args.rank} vs full · {stamp}")
    record = {"benchmark": "lora", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "config": {"steps": args.steps, "hidden": args.hidden, "layers": args.layers, "rank": args.rank,
                         "targets": args.targets or "peft default", "workers": args.workers, "repeats": args.repeats,
                         "common": common},
              "runs": runs, "lora_over_full": ratios(runs), "png": str(png), "environment": environment()}
    path = out / f"lora-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["lora_over_full"], indent=2))
    print(f"wrote {path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
