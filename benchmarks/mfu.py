"""Model FLOP utilisation of DPO training (issue 10): achieved model FLOP/s over a matmul peak measured here.

    alignray bench mfu [--hidden 768] [--layers 4] [--prompt-tokens 256] [--response-tokens 128] [--batch 4]
                       [--steps 10] [--warmup 3] [--threads 2] [--profile auto|always|never] [--out FILE]
                       [HYDRA_OVERRIDE ...]

The peak: fp32 `torch.matmul` of square matrices (1024, 2048, 4096) with the thread count the training worker
gets, best of a few timed repeats, measured before and after the run (the higher counts: on a shared machine a
busy moment would lower the peak and inflate the MFU). The run: DPO (live reference) on synthetic pairs of fixed
length (prompt 256, responses 128 tokens of the demo tokenizer) with a ~22M-parameter Llama (hidden 768, 4 layers,
the demo tokenizer), one Ray Train worker with `--threads` threads, fp32, the configured layouts (shared prompt
and packing on by default). Model FLOPs per step follow `flops_per_pair` (formula in the JSON); achieved FLOP/s =
that over the median step time after `--warmup`, MFU = achieved / peak. Below the goal (or with --profile
always) one policy forward+backward of the same shape runs under torch.profiler and the top operators by self
CPU time are kept: what bounds the step. Writes mfu-<date>.json and .png into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger("alignray.bench.mfu")
GOAL_MFU = 0.40
FORMULA = ("per pair (K=2 responses, live reference): 8·N·tokens + 16·layers·hidden·context, where N = parameters "
           "without the input embedding (the LM head included), tokens = prompt + K·response with the shared "
           "prompt (else K·(prompt + response)), context = Σ over forwarded tokens of the keys each attends to "
           "(causal); 8 = 6 (policy forward + backward) + 2 (reference forward), 16 = 4 (QKᵀ and AV, 2 FLOPs per "
           "multiply-add) × (3 + 1) passes")


def matmul_peak(threads: int, sizes: tuple = (1024, 2048, 4096), repeats: int = 3) -> Dict[str, Any]:
    """Best fp32 GEMM FLOP/s (2·n³ per n×n product) over `sizes`, each the best of `repeats` after a warm-up."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        per_size = {}
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            torch.matmul(a, b)  # warm-up: allocation and kernel selection
            best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
            per_size[str(n)] = round(2 * n**3 / best, 1)
    finally:
        torch.set_num_threads(previous)
    return {"flops_per_s": max(per_size.values()), "per_size_flops_per_s": per_size, "threads": threads,
            "repeats": repeats, "dtype": "fp32"}


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def flops_per_pair(params: int, layers: int, hidden: int, prompt: float, response: float, shared: bool,
                   responses: int = 2) -> Dict[str, float]:
    """Model FLOPs of one preference example per training step (see FORMULA)."""
    if shared:
        tokens = prompt + responses * response
        context = prompt * (prompt + 1) / 2 + responses * (response * prompt + response * (response + 1) / 2)
    else:
        length = prompt + response
        tokens = responses * length
        context = responses * length * (length + 1) / 2
    dense, attention = 8 * params * tokens, 16 * layers * hidden * context
    return {"tokens": tokens, "dense": dense, "attention": attention, "total": dense + attention}


def pairs(n: int, prompt_tokens: int, response_tokens: int) -> List[Dict[str, str]]:
    from benchmarks.listwise import ranked_rows

    return [{"prompt": row["prompt"], "chosen": row["responses"][0], "rejected": row["responses"][1]}
            for row in ranked_rows(n, 2, prompt_tokens, response_tokens)]


def profile_step(model: str, batch: int, length: int, threads: int, top: int = 12) -> List[Dict[str, Any]]:
    """Operators by self CPU time for one policy forward+backward of [batch, length] tokens (no DeepSpeed)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ids = torch.randint(3, policy.config.vocab_size, (batch, length))
    policy(input_ids=ids).logits.float().logsumexp(-1).mean().backward()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        policy(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1), "calls": e.count,
             "share": round(e.self_cpu_time_total / total, 3)} for e in events[:top]]


def train_run(model: str, data: str, work: Path, common: List[str], warmup: int) -> Dict[str, Any]:
    import statistics

    from framework.config import compose_config
    from framework.run import train

    cfg = compose_config([*common, f"model.path={model}", f"data.train={data}", f"output_dir={work / 'run'}"])
    summary = train(cfg)
    rows = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines() if line.strip()]
    from benchmarks._harness import time_breakdown

    times = [r["step_time"] for r in rows if "step_time" in r and r["step"] > warmup]
    manifest = json.loads(next((work / "run" / "store" / "train").glob("v*/manifest.json")).read_text())
    return {"step_time_s": statistics.median(times), "step_times_s": [round(t, 4) for t in times],
            "prompt_tokens": manifest["token_lengths"]["prompt"]["mean"],
            "response_tokens": manifest["token_lengths"]["response"]["mean"],
            "shared_prompt": cfg.model.shared_prompt, "packing": cfg.model.packing,
            "time_breakdown": time_breakdown(r for r in rows if r.get("step", 0) > warmup),
            "wall_time_s": summary["wall_time_s"], "final_loss": summary["final_loss"]}


def plot(result: Dict[str, Any], path: Path, title: str) -> Path:
    from benchmarks._plots import Bars, bar_chart

    peak = result["peak"]["flops_per_s"]
    values = [peak, result["achieved_flops_per_s"], GOAL_MFU * peak]
    return bar_chart(path, title, [Bars(["matmul peak", f"DPO achieved ({result['mfu']:.1%})", f"goal {GOAL_MFU:.0%}"],
                                        [v / 1e9 for v in values], ["tab:gray", "tab:green", "tab:orange"],
                                        ylabel="GFLOP/s (fp32)", rotation=0)], figsize=(7, 4))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench mfu", description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the one worker and of the peak")
    parser.add_argument("--profile", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--out", help="results JSON (default benchmarks/results/mfu-<date>.json); PNG beside")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks._harness import environment, result_path
    from framework import demo_data
    from framework.cluster.launcher import shutdown
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    before = matmul_peak(args.threads)  # before Ray and the worker exist: a quiet process
    log.info("matmul peak: %.1f GFLOP/s (%s)", before["flops_per_s"] / 1e9, before["per_size_flops_per_s"])
    work = Path(tempfile.mkdtemp(prefix="alignray-bench-mfu-"))
    model = str(build_tiny_llama(work / "model", demo_tokenizer_path(), hidden_size=args.hidden, layers=args.layers))
    data = str(demo_data.write_jsonl(iter(pairs(args.batch * args.steps, args.prompt_tokens, args.response_tokens)),
                                     work / "pairs.jsonl"))
    common = ["objective=dpo", f"train.max_steps={args.steps}", "train.warmup_steps=2",
              f"train.micro_batch_size={args.batch}", "train.eval_at_start=false", "train.eval_at_end=false",
              "train.export=false", f"data.max_prompt_length={args.prompt_tokens}",  # + 1: the EOS the store appends
              f"data.max_length={args.prompt_tokens + args.response_tokens + 1}", "cluster.num_workers=1",
              f"cluster.cpus_per_worker={args.threads}", *args.overrides]
    try:
        run = train_run(model, data, work, common, args.warmup)
    finally:
        shutdown()
    # Again after the run: on a shared machine a busy moment lowers a peak and would inflate the MFU; keep the higher.
    after = matmul_peak(args.threads)
    peak = {**max(before, after, key=lambda p: p["flops_per_s"]),
            "before_and_after_flops_per_s": [before["flops_per_s"], after["flops_per_s"]]}
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    weights = AutoModelForCausalLM.from_pretrained(model)
    params = sum(p.numel() for p in weights.parameters()) - weights.get_input_embeddings().weight.numel()
    flops = flops_per_pair(params, config.num_hidden_layers, config.hidden_size, run["prompt_tokens"],
                           run["response_tokens"], run["shared_prompt"])
    achieved = flops["total"] * args.batch / run["step_time_s"]
    result = {"peak": peak, "run": run, "params_counted": params, "flops_per_pair": flops, "formula": FORMULA,
              "achieved_flops_per_s": round(achieved, 1), "mfu": round(achieved / peak["flops_per_s"], 4),
              "goal": {"mfu_min": GOAL_MFU}}
    result["goal"]["met"] = result["mfu"] >= GOAL_MFU
    if args.profile == "always" or (args.profile == "auto" and not result["goal"]["met"]):
        length = int(run["prompt_tokens"] + 2 * run["response_tokens"]) if run["shared_prompt"] else \
            int(run["prompt_tokens"] + run["response_tokens"])
        rows = args.batch if run["shared_prompt"] else 2 * args.batch
        result["profile"] = {"shape": [rows, length], "top_ops": profile_step(model, rows, length, args.threads)}
    path = result_path("mfu", args.out)
    png = plot(result, path.with_suffix(".png"),
               f"DPO, {params / 1e6:.0f}M Llama, {args.threads} threads · {dt.date.today().isoformat()}")
    record = {"benchmark": "mfu", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "common": common}, **result,
              "png": str(png), "environment": environment()}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"mfu": result["mfu"], "achieved_gflops": round(achieved / 1e9, 1),
                      "peak_gflops": round(peak["flops_per_s"] / 1e9, 1)}, indent=2))
    print(f"wrote {path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
