"""DPO training throughput: alignray (Ray Train + DeepSpeed ZeRO-2) against TRL's DPOTrainer, in the same run.

    python -m benchmarks.train_throughput [--steps 400] [--batch 8] [--max-length 64] [--warmup 10] [--repeats 2]

Both sides train DPO (sigmoid, β=0.1, fp32, AdamW, lr 1e-4, 10 warm-up LR steps then cosine, grad clip 1.0, live
reference forward) on the same demo pairs with the same tiny Llama (built once into a temp dir), the same global
batch and max length. Four runs, one after the other, each in its own process (so each pays its own imports and,
for alignray, its own Ray start-up):

- TRL 1.16 `DPOTrainer` on CPU in one process, torch threads = 1 and = 2;
- alignray with 1 worker × batch B (2 threads) and 2 workers × B/2 (1 thread each).

Per run: steady-state steps/s and tokens/s over the steps after `--warmup` (tokens = non-pad tokens of every
chosen and rejected prompt+response in the step, all workers), measured two ways — `interval` (time between the
ends of consecutive steps: includes batch building and metric logging) and `compute` (the step itself: alignray's
`step_time`, TRL's on_step_begin → on_step_end) — and the process wall time from launch to exit. The machine is
shared, so the four runs are repeated in interleaved rounds and each configuration's least disturbed repeat (highest
interval tokens/s) is compared, as in store_bench.py; every repeat is kept in the JSON. Writes
benchmarks/results/train-throughput-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LR, BETA, LR_WARMUP, SEED = 1e-4, 0.1, 10, 0
CHILD_TIMEOUT_S = 300


# -- shared measurement ------------------------------------------------------------------------------------
def steady_state(steps: List[Dict[str, float]], warmup: int) -> Dict[str, float]:
    """Rates over steps after `warmup`. Each step: `end` (wall clock at its end), `compute` (seconds) and `tokens`."""
    steps = sorted(steps, key=lambda s: s["step"])
    kept = [s for s in steps if s["step"] > warmup]
    if len(kept) < 2:
        raise ValueError(f"only {len(kept)} steps after warm-up {warmup}: raise --steps")
    # Interval of step k = end(k) - end(k-1): the first kept step needs its predecessor's end.
    previous = {s["step"]: s["end"] for s in steps}
    intervals = [s["end"] - previous[s["step"] - 1] for s in kept]
    tokens = sum(s["tokens"] for s in kept)
    compute = sum(s["compute"] for s in kept)
    per_step = tokens / len(kept)
    return {"steps_measured": len(kept), "tokens_per_step": round(per_step, 1),
            "interval_steps_per_s": round(len(kept) / sum(intervals), 2),
            "interval_tokens_per_s": round(tokens / sum(intervals), 1),
            "compute_steps_per_s": round(len(kept) / compute, 2), "compute_tokens_per_s": round(tokens / compute, 1),
            # The median step is robust to the other jobs on the machine preempting a few steps.
            "median_interval_tokens_per_s": round(per_step / statistics.median(intervals), 1)}


# -- children ----------------------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace) -> Dict[str, Any]:
    """TRL DPOTrainer in this process; per-step times from a callback, tokens from TRL's `num_tokens` log."""
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    import transformers
    from trl import DPOConfig, DPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    rows = [json.loads(line) for line in open(args.data)]
    steps: Dict[int, Dict[str, float]] = {}
    losses: List[float] = []
    last_tokens = [0.0]

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            steps[state.global_step] = {"step": state.global_step, "end": time.time(),
                                        "compute": time.perf_counter() - self.began}

        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "num_tokens" in logs:  # cumulative attention-mask sum of chosen+rejected batches
                steps[state.global_step]["tokens"] = logs["num_tokens"] - last_tokens[0]
                last_tokens[0] = logs["num_tokens"]
                losses.append(logs["loss"])

    config = DPOConfig(
        output_dir=str(Path(args.out) / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        max_length=args.max_length, learning_rate=LR, beta=BETA, loss_type=["sigmoid"], lr_scheduler_type="cosine",
        warmup_steps=LR_WARMUP, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", use_cpu=True, bf16=False,
        fp16=False, gradient_checkpointing=False, precompute_ref_log_probs=False, logging_steps=1, save_strategy="no",
        report_to="none", dataloader_num_workers=0, disable_tqdm=True, seed=SEED,
        model_init_kwargs={"dtype": torch.float32},
    )
    trainer = DPOTrainer(model=args.model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=transformers.AutoTokenizer.from_pretrained(args.model), callbacks=[Timer()])
    trainer.train()
    return {"steps": list(steps.values()), "first_loss": losses[0], "final_loss": losses[-1],
            "first_step_end": min(s["end"] for s in steps.values())}


def run_alignray(args: argparse.Namespace) -> Dict[str, Any]:
    """`framework.run.train` with composed config, as `alignray train` would; steps from metrics.jsonl."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from framework.cluster.launcher import shutdown
    from framework.config import from_dict
    from framework.run import train

    workers = args.workers
    # One output dir per run, so every repeat builds its store (TRL tokenises afresh every time too).
    overrides = [
        f"output_dir={Path(args.out) / Path(args.result).stem}", "objective=dpo", f"objective.beta={BETA}",
        "deepspeed=zero2", "deepspeed.dtype=fp32", "model.dtype=fp32", f"model.path={args.model}",
        f"data.train={args.data}", f"data.max_length={args.max_length}", f"data.max_prompt_length={args.max_length // 2}",
        f"train.max_steps={args.steps}", f"train.micro_batch_size={args.batch // workers}", f"train.lr={LR}",
        f"train.warmup_steps={LR_WARMUP}", f"train.seed={SEED}", "train.export=false", "train.eval_at_start=false",
        "train.length_grouping=false",  # TRL samples uniformly too
        f"cluster.num_workers={workers}", f"cluster.cpus_per_worker={2 // workers}",
    ]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = compose(config_name="config", overrides=overrides)
    try:
        summary = train(from_dict(OmegaConf.to_container(raw, resolve=True)))
    finally:
        shutdown()
    rows = [json.loads(line) for line in open(summary["metrics"]) if line.strip()]
    rows = [r for r in rows if "loss" in r and "step_time" in r]
    steps = [{"step": r["step"], "end": r["wall_clock"], "compute": r["step_time"], "tokens": r["tokens"]} for r in rows]
    return {"steps": steps, "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"],
            "first_step_end": min(s["end"] for s in steps), "in_process_wall_s": summary["wall_time_s"]}


def child_main(args: argparse.Namespace) -> int:
    result = run_trl(args) if args.child == "trl" else run_alignray(args)
    Path(args.result).write_text(json.dumps(result))
    return 0


# -- parent ------------------------------------------------------------------------------------------------
def launch(name: str, child_args: List[str], threads: int, out: Path, warmup: int) -> Dict[str, Any]:
    """Run one child in its own process group; wall time is launch → exit, as a user would see it."""
    result_file = out / f"{name}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", *child_args, "--result", str(result_file)]
    print(f"[{name}] {' '.join(child_args)}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    started_wall, started = time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=open(out / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    try:
        code = proc.wait(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's group only
        raise RuntimeError(f"{name} took over {CHILD_TIMEOUT_S} s; log: {out / f'{name}.log'}")
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{name} exited {code}; log: {out / f'{name}.log'}")
    raw = json.loads(result_file.read_text())
    run = {"process_wall_s": round(wall, 1), "launch_to_first_step_s": round(raw["first_step_end"] - started_wall, 1),
           **steady_state(raw["steps"], warmup), "steps": len(raw["steps"]), "threads_per_process": threads,
           "first_loss": round(raw["first_loss"], 4), "final_loss": round(raw["final_loss"], 4),
           "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2)}
    if "in_process_wall_s" in raw:
        run["in_process_wall_s"] = raw["in_process_wall_s"]
    print(f"[{name}] {json.dumps(run)}", file=sys.stderr, flush=True)
    return run


def prepare_inputs(out: Path, rows: int) -> Dict[str, str]:
    """The demo pairs as JSONL and the tiny Llama + demo tokenizer as one local HF directory, for both sides."""
    from framework import demo_data
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    data = demo_data.write_jsonl(demo_data.pairs(rows, seed=1), out / "pairs.jsonl")
    model = build_tiny_llama(out / "model", demo_tokenizer_path(), seed=SEED)
    return {"data": str(data), "model": str(model)}


def environment() -> Dict[str, Any]:
    import deepspeed
    import ray
    import torch
    import transformers
    import trl

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "deepspeed": deepspeed.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
            "platform": platform.platform(), "load_avg": os.getloadavg()}


def token_check(out: Path, inputs: Dict[str, str]) -> Dict[str, Any]:
    """Mean tokens per pair over all rows as TRL tokenizes them (prompt+response+EOS, one string) and as the
    alignray store holds them: equal means both sides train on the same token sequences."""
    from transformers import AutoTokenizer

    from framework.store import open_store

    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    rows = [json.loads(line) for line in open(inputs["data"])]
    count = lambda text: len(tokenizer(text + tokenizer.eos_token)["input_ids"])  # noqa: E731
    trl = [count(r["prompt"] + r["chosen"]) + count(r["prompt"] + r["rejected"]) for r in rows]
    table = open_store(str(out / "alignray_1worker-r0" / "store" / "train")).table()
    ours = [len(p) * len(rs) + sum(map(len, rs))
            for p, rs in zip(table["prompt_ids"].to_pylist(), table["response_ids"].to_pylist())]
    return {"trl_tokens_per_pair": round(sum(trl) / len(trl), 3), "alignray_tokens_per_pair": round(sum(ours) / len(ours), 3),
            "rows": [len(trl), len(ours)]}


def best(repeats: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The least disturbed repeat (highest interval tokens/s) plus the spread over repeats."""
    top = max(repeats, key=lambda r: r["interval_tokens_per_s"])
    return {**top, "interval_tokens_per_s_all": [r["interval_tokens_per_s"] for r in repeats],
            "process_wall_s_all": [r["process_wall_s"] for r in repeats]}


def ratios(runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """alignray / TRL (best repeat of each); TRL's reference is its faster thread setting (the peer at its best)."""
    best_trl = max(("trl_threads1", "trl_threads2"), key=lambda k: runs[k]["interval_tokens_per_s"])
    out: Dict[str, Any] = {"trl_reference": best_trl}
    for ours in ("alignray_1worker", "alignray_2workers"):
        for metric in ("interval_tokens_per_s", "compute_tokens_per_s", "median_interval_tokens_per_s", "process_wall_s"):
            out[f"{ours}/{metric}"] = round(runs[ours][metric] / runs[best_trl][metric], 2)
    return out


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8, help="global batch (pairs per optimizer step)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the steady-state rates")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the four runs")
    for hidden in ("--child", "--data", "--model", "--out", "--result"):  # used by the child processes
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.batch % 2:
        parser.error("--batch must be even (2 workers take half each)")

    out = Path(tempfile.mkdtemp(prefix="alignray-throughput-"))
    inputs = prepare_inputs(out, args.rows)
    env_before = environment()
    common = ["--data", inputs["data"], "--model", inputs["model"], "--out", str(out), "--steps", str(args.steps),
              "--batch", str(args.batch), "--max-length", str(args.max_length)]
    plan = [("trl_threads1", ["--child", "trl", "--threads", "1"], 1),
            ("trl_threads2", ["--child", "trl", "--threads", "2"], 2),
            ("alignray_1worker", ["--child", "alignray", "--workers", "1"], 2),
            ("alignray_2workers", ["--child", "alignray", "--workers", "2"], 1)]
    repeats: Dict[str, List[Dict[str, Any]]] = {name: [] for name, _, _ in plan}
    for round_ in range(args.repeats):
        for name, child, threads in plan if round_ % 2 == 0 else plan[::-1]:  # alternate the order between rounds
            repeats[name].append(launch(f"{name}-r{round_}", child + common, threads, out, args.warmup))
    runs = {name: best(found) for name, found in repeats.items()}
    record = {
        "benchmark": "train_throughput", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "config": {"objective": "dpo (sigmoid)", "beta": BETA, "lr": LR, "lr_warmup_steps": LR_WARMUP,
                   "dtype": "fp32", "steps": args.steps, "global_batch": args.batch, "max_length": args.max_length,
                   "alignray_max_prompt_length": args.max_length // 2, "steady_state_after_step": args.warmup,
                   "repeats": args.repeats, "rows": args.rows, "data": "framework.demo_data.pairs(rows, seed=1)",
                   "model": "build_tiny_llama (2 layers, hidden 64) + demo tokenizer", "alignray_zero_stage": 2,
                   "reference": "live forward on both sides", "work_dir": str(out)},
        "token_check": token_check(out, inputs), "runs": runs, "repeats": repeats, "ratios": ratios(runs),
        "environment": env_before, "load_avg_after": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"train-throughput-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"token_check": record["token_check"], "runs": runs, "ratios": record["ratios"]}, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
