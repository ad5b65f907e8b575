"""Listwise training with and without the shared prompt (issue 10): K = 2, 4, 8 responses per prompt.

    alignray bench listwise [--ks 2,4,8] [--objective lipo_lambda] [--prompt-tokens 128] [--response-tokens 32]
                            [--steps 12] [--warmup 4] [--batch 4] [--hidden 256] [--layers 4] [--repeats 1]
                            [--out FILE] [HYDRA_OVERRIDE ...]

Synthetic ranked lists (a raw `{"prompt", "responses", "scores"}` JSONL the store ingests) whose prompt is 4× the
response (128 and 32 tokens of the demo tokenizer), a 4-layer hidden-256 Llama with the demo tokenizer, one
Ray Train worker with 2 threads, fp32, live reference. For each K the same run with `model.shared_prompt=true`
(one row [prompt | r1 | … | rK]) and `=false` (the prompt forwarded once per response); packing stays at its
default. Per run: the median step time over the steps after `--warmup` (robust to the other jobs on the machine),
lists/s and responses/s. Reported: unshared/shared time per K (the sharing speed-up) and time(K=8)/time(K=2) with
sharing. Runs are interleaved over `--repeats`; each configuration's fastest repeat counts, all are kept.
Writes listwise-<date>.json and .png into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger("alignray.bench.listwise")
GOALS = {"shared_speedup_at_k8_min": 3.0, "k8_over_k2_shared_max": 2.5}


def ranked_rows(n: int, k: int, prompt_tokens: int, response_tokens: int, seed: int = 0) -> List[Dict[str, Any]]:
    """`n` lists of `k` distinct scored responses, prompt and responses cut to (about) the given token counts."""
    from transformers import AutoTokenizer

    from framework.demo_data import TOPICS
    from framework.model.demo import demo_tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_path())
    words = sorted(w for topic in TOPICS.values() for w in topic)
    rng = random.Random(seed)

    def text(tokens: int) -> str:  # the demo words are 1-2 tokens each: draw more, then cut at the token budget
        ids = tokenizer(" ".join(rng.choice(words) for _ in range(tokens)), add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[:tokens])

    return [{"prompt": text(prompt_tokens), "responses": [text(response_tokens) for _ in range(k)],
             "scores": [float(k - i) for i in range(k)]} for _ in range(n)]


def steady_step_time(rows: List[Dict[str, Any]], warmup: int) -> float:
    """Median step time (s) over the optimizer steps after `warmup`."""
    times = [r["step_time"] for r in rows if "step_time" in r and r["step"] > warmup]
    if not times:
        raise ValueError(f"no step after warm-up {warmup}: raise --steps")
    return statistics.median(times)


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per K the sharing speed-up (unshared/shared step time), and time(K_max)/time(K_min) with sharing."""
    time = {(r["k"], r["shared_prompt"]): r["step_time_s"] for r in runs}
    ks = sorted({r["k"] for r in runs})
    speedup = {f"k{k}": round(time[(k, False)] / time[(k, True)], 3) for k in ks
               if (k, False) in time and (k, True) in time}
    shared = [k for k in ks if (k, True) in time]
    scaling = round(time[(shared[-1], True)] / time[(shared[0], True)], 3) if len(shared) > 1 else None
    return {"shared_speedup": speedup, f"k{shared[-1]}_over_k{shared[0]}_shared": scaling} if shared else {}


def run_one(k: int, shared: bool, data: str, model: str, work: Path, common: List[str]) -> Dict[str, Any]:
    from framework.config import compose_config
    from framework.run import train

    name = f"k{k}-{'shared' if shared else 'unshared'}"
    output = work / name
    summary = train(compose_config([*common, f"data.train={data}", f"model.path={model}", f"output_dir={output}",
                                    f"model.shared_prompt={str(shared).lower()}"]))
    rows = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines() if line.strip()]
    return {"name": name, "k": k, "shared_prompt": shared, "rows": rows, "wall_time_s": summary["wall_time_s"],
            "final_loss": summary["final_loss"]}


def plot(runs: List[Dict[str, Any]], ratios: Dict[str, Any], path: Path, title: str) -> Path:
    from benchmarks._plots import Bars, Lines, Series, chart

    series = [Series(f"shared_prompt={str(shared).lower()}",
                     *zip(*sorted((r["k"], r["step_time_s"]) for r in runs if r["shared_prompt"] == shared)), color)
              for shared, color in ((True, "tab:green"), (False, "tab:gray"))]
    speedup = ratios.get("shared_speedup", {})
    return chart(path, title, [Lines(series, xlabel="responses per prompt (K)", ylabel="median step time (s)"),
                               Bars(list(speedup), list(speedup.values()), "tab:green", rotation=0,
                                    title="unshared / shared step time")], figsize=(10, 4))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench listwise", description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--objective", default="lipo_lambda", choices=["lipo_lambda", "listmle"])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--response-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="lists per step")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the fastest repeat counts")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/listwise-<date>.json); PNG beside")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks._harness import environment, interleaved, result_path, time_breakdown
    from framework import demo_data
    from framework.cluster.launcher import shutdown
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    work = Path(tempfile.mkdtemp(prefix="alignray-bench-listwise-"))
    model = str(build_tiny_llama(work / "model", demo_tokenizer_path(), hidden_size=args.hidden, layers=args.layers))
    ks = [int(k) for k in args.ks.split(",")]
    rows_needed = args.batch * args.steps
    data = {k: str(demo_data.write_jsonl(iter(ranked_rows(rows_needed, k, args.prompt_tokens, args.response_tokens,
                                                          seed=k)), work / f"k{k}.jsonl")) for k in ks}
    common = [f"objective={args.objective}", f"train.max_steps={args.steps}", "train.warmup_steps=2",
              f"train.micro_batch_size={args.batch}", "train.eval_at_start=false", "train.eval_at_end=false",
              "train.export=false", f"data.max_prompt_length={args.prompt_tokens}",  # + 1: the EOS the store appends
              f"data.max_length={args.prompt_tokens + args.response_tokens + 1}", "cluster.num_workers=1",
              "cluster.cpus_per_worker=2", *args.overrides]
    repeats: Dict[str, List[Dict[str, Any]]] = {}
    try:
        for repeat, (k, shared) in interleaved([(k, shared) for k in ks for shared in (True, False)], args.repeats):
            run = run_one(k, shared, data[k], model, work / f"r{repeat}", common)
            rows = run.pop("rows")
            run.update(repeat=repeat, step_time_s=round(steady_step_time(rows, args.warmup), 4),
                       time_breakdown=time_breakdown(r for r in rows if r.get("step", 0) > args.warmup))
            run.update(lists_per_s=round(args.batch / run["step_time_s"], 2),
                       responses_per_s=round(args.batch * k / run["step_time_s"], 2))
            repeats.setdefault(run["name"], []).append(run)
            log.info("%s #%d: %.3f s/step, %.2f lists/s", run["name"], repeat, run["step_time_s"], run["lists_per_s"])
    finally:
        shutdown()
    runs = [{**min(done, key=lambda r: r["step_time_s"]), "step_time_s_repeats": [r["step_time_s"] for r in done]}
            for done in repeats.values()]
    ratios = summarise(runs)
    path = result_path("listwise", args.out)
    png = plot(runs, ratios, path.with_suffix(".png"), f"{args.objective}, prompt {args.prompt_tokens} + K × "
               f"{args.response_tokens} tokens, {args.layers}×{args.hidden} Llama · {dt.date.today().isoformat()}")
    record = {"benchmark": "listwise", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "common": common},
              "runs": runs, "ratios": ratios, "goals": GOALS, "png": str(png), "environment": environment()}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
