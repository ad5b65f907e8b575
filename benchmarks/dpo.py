"""DPO training throughput: alignray against TRL's DPOTrainer on the same model, rows, batch and budget.

    alignray bench dpo --baseline trl [--workload demo|hh] [--data FILE] [--model DIR] [--out FILE]
    alignray bench scaling [--workload demo|hh] [...]          (our DPO with 1 vs 2 workers)

Workloads: `hh` (default when the HH-RLHF pairs are beside the checkout, or with --data FILE): real pairs split at
their shared prefix (the store's rule), a 4-layer hidden-256 Llama with the demo tokenizer (or --model DIR), max
length 512; `demo`: the demo pairs and the tiny demo-size Llama, max length 64. Both sides train DPO (sigmoid,
β=0.1, fp32, AdamW, lr 1e-4 with warm-up then cosine, grad clip 1.0, live reference) on the same JSONL rows with the
same global batch, each in its own process, in interleaved repeats. alignray runs as `alignray train` would, with
its default forward layout (shared prompt + packing; `--overrides` passes Hydra overrides to our side).

Truncation: TRL 1.16 tokenizes prompt+response as one string, cuts each sequence to max_length keeping its start
and drops rows whose prompt alone fills max_length. The rows written here are those TRL keeps (prompt < max_length
tokens) and alignray gets data.max_prompt_length = max_length - 1, so its rule (prompt whole, response cut to
max_length - prompt) cuts the same tokens. The loss check verifies it: the multiset of token sequences of every
row is compared between TRL's prepared dataset and alignray's store, and both compute the DPO loss of the first
batch at step 0 in one process (against a perturbed reference so that the loss depends on every token).

The top-level "ratio" is ours / TRL in pairs per second between step ends after `--warmup` (the least disturbed
repeat of each side); tokens/s beside it count the prompt once per response (TRL's `num_tokens`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks import _harness

LR, BETA, LR_WARMUP, SEED = 1e-4, 0.1, 5, 0
HH_MODEL = {"hidden_size": 256, "layers": 4}
DEFAULTS = {"hh": {"max_length": 512, "steps": 20, "warmup": 3, "rows": 1500},
            "demo": {"max_length": 64, "steps": 150, "warmup": 10, "rows": 2000}}
CHILD_TIMEOUT_S = 1200  # a hung child, not a slow one: the machine may be shared
LOSS_TOLERANCE = 1e-5


# -- arguments and workload -----------------------------------------------------------------------------------
def shared_hh_data(checkout: Path = _harness.REPO) -> Optional[Path]:
    """The HH-RLHF pairs in /work/shared or beside the checkout, if present."""
    for folder in (Path("/work/shared/data/hh-rlhf"), checkout.parent / "shared" / "data" / "hh-rlhf"):
        found = sorted(folder.glob("*.jsonl*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def parse_args(argv: Sequence[str], prog: str = "alignray bench dpo") -> argparse.Namespace:
    """Arguments with the workload's defaults filled in (an explicit --data implies hh)."""
    scaling = prog.endswith("scaling")
    parser = argparse.ArgumentParser(prog=prog, description="our DPO pairs/s with 1 vs 2 workers, same global batch"
                                     if scaling else __doc__.splitlines()[0])
    if scaling:
        parser.set_defaults(workers=1)
    else:
        parser.add_argument("--baseline", choices=["trl"], default="trl", help="the peer to compare with")
        parser.add_argument("--workers", type=int, default=1, choices=[1, 2], help="alignray workers")
    parser.add_argument("--workload", choices=sorted(DEFAULTS), help="default: hh when its data is found, else demo")
    parser.add_argument("--data", help="pairwise JSONL(.gz) with chosen/rejected (and prompt); implies --workload hh")
    parser.add_argument("--model", help="local HF model directory for both sides (default: built offline)")
    parser.add_argument("--out", help="result JSON path (default benchmarks/results/<scenario>-<date>.json)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, help="first steps left out of the steady-state rates")
    parser.add_argument("--max-length", type=int, help="truncation budget in tokens (prompt + response)")
    parser.add_argument("--rows", type=int, help="at most this many pairs")
    parser.add_argument("--batch", type=int, default=8, help="global batch (pairs per optimizer step)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the runs")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for alignray's runs")
    for hidden in ("--child", "--inputs", "--result"):  # used by the child processes
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.data and args.workload == "demo":
        parser.error("--data gives HH-style pairs: use it with --workload hh")
    if args.workload is None:
        args.workload = "hh" if (args.data or shared_hh_data()) else "demo"
    if args.workload == "hh" and not args.data:
        found = shared_hh_data()
        if found is None:
            parser.error("no HH-RLHF data found in /work/shared/data/hh-rlhf or ../shared: pass --data FILE")
        args.data = str(found)
    for key, value in DEFAULTS[args.workload].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch % 2:
        parser.error("--batch must be even (2 workers take half each)")
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps must exceed --warmup + 1 ({args.warmup + 1})")
    return args


def _read_rows(path: str) -> List[Dict[str, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def explicit_pairs(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, str]]:
    """{prompt, chosen, rejected} text rows: implicit-prompt dialogues are split with the store's rule, so that
    both sides receive the very same three strings."""
    from framework.store.implicit import split_implicit_text

    out = []
    for row in rows:
        if "prompt" in row:
            prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        else:
            prompt, chosen, rejected = split_implicit_text(row["chosen"], row["rejected"])
        if prompt and chosen.strip() and rejected.strip() and chosen != rejected:
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def fit_rows(rows: Sequence[Dict[str, str]], tokenizer: Any, max_length: int) -> tuple:
    """The rows TRL keeps (prompt < max_length tokens) and the mean tokens per pair as TRL counts them: each
    prompt+response+EOS string tokenized whole and cut to max_length, the prompt once per response."""
    kept, tokens = [], []
    for row in rows:
        if len(tokenizer(row["prompt"])["input_ids"]) >= max_length:
            continue
        kept.append(row)
        tokens.append(sum(min(max_length, len(tokenizer(row["prompt"] + row[side] + tokenizer.eos_token)["input_ids"]))
                          for side in ("chosen", "rejected")))
    return kept, (sum(tokens) / len(tokens) if tokens else 0.0)


def prepare_workload(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """Model directory and pairs JSONL for both sides, written once into `work`."""
    from transformers import AutoTokenizer

    from framework import demo_data
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    if args.model:
        model, model_info = args.model, args.model
    elif args.workload == "hh":
        model = str(build_tiny_llama(work / "model", demo_tokenizer_path(), seed=SEED, **HH_MODEL))
        model_info = "build_tiny_llama({layers} layers, hidden {hidden_size}) + demo tokenizer".format(**HH_MODEL)
    else:
        model = str(build_tiny_llama(work / "model", demo_tokenizer_path(), seed=SEED))
        model_info = "build_tiny_llama (demo size: 2 layers, hidden 64) + demo tokenizer"
    raw = _read_rows(args.data) if args.workload == "hh" else list(demo_data.pairs(args.rows, seed=1))
    rows, tokens_per_pair = fit_rows(explicit_pairs(raw)[: args.rows], AutoTokenizer.from_pretrained(model), args.max_length)
    if len(rows) < args.batch:
        raise SystemExit(f"only {len(rows)} usable pairs (prompt < {args.max_length} tokens): need at least --batch")
    data = demo_data.write_jsonl(iter(rows), work / "pairs.jsonl")
    return {"workload": args.workload, "data": str(data), "source": args.data or "framework.demo_data.pairs(seed=1)",
            "model": model, "model_info": model_info, "rows": len(rows), "rows_read": len(raw),
            "tokens_per_pair": round(tokens_per_pair, 2), "max_length": args.max_length, "batch": args.batch,
            "steps": args.steps, "work": str(work)}


def alignray_overrides(inputs: Dict[str, Any], workers: int, output_dir: str, extra: Sequence[str] = ()) -> List[str]:
    """Hydra overrides for our side: the same model, rows, batch, budget, optimizer and live reference as TRL."""
    length = inputs["max_length"]
    return [f"output_dir={output_dir}", "objective=dpo", f"objective.beta={BETA}", "deepspeed=zero2",
            "deepspeed.dtype=fp32", "model.dtype=fp32", f"model.path={inputs['model']}", f"data.train={inputs['data']}",
            f"data.max_length={length}", f"data.max_prompt_length={length - 1}", "data.use_stored_reference=never",
            f"train.max_steps={inputs['steps']}", f"train.micro_batch_size={inputs['batch'] // workers}",
            f"train.lr={LR}", f"train.warmup_steps={LR_WARMUP}", f"train.seed={SEED}", "train.export=false",
            "train.eval_at_start=false", "train.eval_at_end=false", f"cluster.num_workers={workers}",
            f"cluster.cpus_per_worker={max(1, 2 // workers)}", *extra]


# -- children ------------------------------------------------------------------------------------------------
def _trl_trainer(inputs: Dict[str, Any], out: Path, callbacks: Sequence[Any] = (), ref_model: Any = None) -> Any:
    import datasets
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    config = DPOConfig(
        output_dir=str(out), max_steps=inputs["steps"], per_device_train_batch_size=inputs["batch"],
        max_length=inputs["max_length"], learning_rate=LR, beta=BETA, loss_type=["sigmoid"],
        lr_scheduler_type="cosine", warmup_steps=LR_WARMUP, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, precompute_ref_log_probs=False,
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True, seed=SEED,
        model_init_kwargs={"dtype": torch.float32},
    )
    rows = datasets.Dataset.from_list(_read_rows(inputs["data"]))
    return DPOTrainer(model=inputs["model"], ref_model=ref_model, args=config, train_dataset=rows,
                      processing_class=transformers.AutoTokenizer.from_pretrained(inputs["model"]), callbacks=list(callbacks))


def run_trl(inputs: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """TRL's DPOTrainer in this process: per-step times from a callback, tokens from its `num_tokens` log."""
    import transformers

    steps: Dict[int, Dict[str, float]] = {}
    last_tokens = [0.0]

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            steps[state.global_step] = {"step": state.global_step, "end": time.time(),
                                        "compute": time.perf_counter() - self.began}

        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "num_tokens" in logs:  # cumulative attention-mask sum of the chosen+rejected batches
                steps[state.global_step].update(tokens=logs["num_tokens"] - last_tokens[0], loss=logs["loss"])
                last_tokens[0] = logs["num_tokens"]

    _trl_trainer(inputs, out / "trl", [Timer()]).train()
    ordered = [steps[k] for k in sorted(steps)]
    return {"steps": ordered, "first_loss": ordered[0].get("loss"), "final_loss": ordered[-1].get("loss")}


def run_alignray(inputs: Dict[str, Any], out: Path, workers: int, extra: Sequence[str]) -> Dict[str, Any]:
    """`framework.run.train` on the composed config, as `alignray train` would; steps from metrics.jsonl."""
    from framework.cluster.launcher import shutdown
    from framework.config import compose_config
    from framework.run import train

    cfg = compose_config(alignray_overrides(inputs, workers, str(out), extra))
    try:
        summary = train(cfg)
    finally:
        shutdown()
    rows = [json.loads(line) for line in open(summary["metrics"]) if line.strip()]
    rows = [r for r in rows if "loss" in r and "step_time" in r]
    steps = [{"step": r["step"], "end": r["wall_clock"], "compute": r["step_time"], "tokens": r["tokens"]} for r in rows]
    layout = json.loads((out / "run_info.json").read_text()) if (out / "run_info.json").exists() else {}
    return {"steps": steps, "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"],
            "in_process_wall_s": summary["wall_time_s"], "time_breakdown_s": _harness.time_breakdown(rows),
            "layout": {k: layout.get(k) for k in ("shared_prompt", "packing", "world_size")}}


def child_main(args: argparse.Namespace) -> int:
    inputs = json.loads(Path(args.inputs).read_text())
    out = Path(args.result).with_suffix("")
    if args.child == "trl":
        result = run_trl(inputs, out)
    elif args.child == "check":
        from benchmarks.dpo_check import loss_check

        result = loss_check(inputs, out, alignray_overrides(inputs, 1, str(out / "alignray"), args.overrides))
    else:
        result = run_alignray(inputs, out, args.workers, args.overrides)
    Path(args.result).write_text(json.dumps(result))
    return 0


# -- parent --------------------------------------------------------------------------------------------------
def measure(raw: Dict[str, Any], batch: int, warmup: int) -> Dict[str, Any]:
    """A child's result as steady-state pairs/s and tokens/s (prompt once per response), raw steps dropped."""
    rates = _harness.steady_state(raw["steps"], warmup)
    run = {k: v for k, v in raw.items() if k != "steps"}
    run.update(rates, steps=len(raw["steps"]), pairs_per_s=round(batch * rates["interval_steps_per_s"], 2),
               median_pairs_per_s=round(batch * rates["median_interval_steps_per_s"], 2),
               compute_pairs_per_s=round(batch * rates["compute_steps_per_s"], 2))
    if "tokens_per_step" in rates:
        run["tokens_per_s"] = round(rates["tokens_per_step"] * rates["interval_steps_per_s"], 1)
    first_end = min(s["end"] for s in raw["steps"])
    run["launch_to_first_step_s"] = round(first_end - raw["launched_at"], 1)
    return run


def ratio(ours: Dict[str, Any], theirs: Dict[str, Any], key: str = "pairs_per_s") -> float:
    """ours / theirs on `key`, rounded for the report."""
    if theirs[key] <= 0:
        raise ValueError(f"baseline {key} is {theirs[key]}: nothing to compare with")
    return round(ours[key] / theirs[key], 3)


def run_plan(plan: Sequence[tuple], inputs: Dict[str, Any], args: argparse.Namespace, work: Path) -> Dict[str, List]:
    """Every (name, child args, threads) of `plan`, `args.repeats` interleaved rounds; measured repeats by name."""
    repeats: Dict[str, List[Dict[str, Any]]] = {name: [] for name, _, _ in plan}
    inputs_file = work / "inputs.json"
    for round_, (name, child, threads) in _harness.interleaved(plan, args.repeats):
        raw = _harness.run_child("benchmarks.dpo", f"{name}-r{round_}", [*child, "--inputs", str(inputs_file),
                                 "--overrides", *args.overrides], threads, work, CHILD_TIMEOUT_S)
        repeats[name].append(measure(raw, inputs["batch"], args.warmup))
        print(f"[{name}-r{round_}] {repeats[name][-1]['pairs_per_s']} pairs/s", file=sys.stderr, flush=True)
    return repeats


def plot(runs: Dict[str, Dict[str, Any]], path: Path, title: str) -> Path:
    """Pairs/s and tokens/s (prompt once per response) of each configuration's best repeat."""
    from benchmarks._plots import Bars, bar_chart

    names, colors = list(runs), ["tab:gray", "tab:green", "tab:blue"][: len(runs)]
    return bar_chart(path, title, [
        Bars(names, [runs[n]["pairs_per_s"] for n in names], colors, title="pairs/s (steady state)", rotation=0),
        Bars(names, [runs[n].get("tokens_per_s", 0.0) for n in names], colors, title="tokens/s, prompt once per response",
             rotation=0)])


def write_record(stem: str, args: argparse.Namespace, inputs: Dict[str, Any], extra: Dict[str, Any],
                 repeats: Dict[str, List], title: str, started: float) -> Path:
    runs = {name: _harness.best(found, "pairs_per_s") for name, found in repeats.items()}
    record = {"benchmark": stem, "date": dt.datetime.now().isoformat(timespec="seconds"), **extra,
              "config": {**inputs, "objective": "dpo (sigmoid)", "beta": BETA, "lr": LR, "lr_warmup_steps": LR_WARMUP,
                         "dtype": "fp32", "reference": "live forward on both sides", "steady_state_after_step": args.warmup,
                         "repeats": args.repeats,
                         "alignray_overrides": alignray_overrides(inputs, args.workers, "<run>", args.overrides)},
              "runs": runs, "repeats": repeats, "environment": _harness.environment(),
              "bench_wall_s": round(time.perf_counter() - started, 1)}
    path = _harness.result_path(f"{stem}-{args.workload}", args.out)  # one file per workload and day
    record["chart"] = str(plot(runs, path.with_suffix(".png"), f"{title} (ratio {extra['ratio']}×)"))
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"ratio": record["ratio"], "runs": {n: r["pairs_per_s"] for n, r in runs.items()},
                      "bench_wall_s": record["bench_wall_s"]}, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return path


def _setup(argv: Sequence[str], prog: str) -> tuple:
    args = parse_args(argv, prog)
    work = Path(tempfile.mkdtemp(prefix=f"alignray-bench-{prog.split()[-1]}-"))
    inputs = prepare_workload(args, work)
    (work / "inputs.json").write_text(json.dumps(inputs))
    return args, work, inputs


def main(argv: List[str]) -> int:
    """`alignray bench dpo`: ours vs TRL, ratio of pairs/s, plus the first-batch loss check."""
    if "--child" in argv:
        return child_main(parse_args(argv))
    started = time.perf_counter()
    args, work, inputs = _setup(argv, "alignray bench dpo")
    check = _harness.run_child("benchmarks.dpo", "loss-check", ["--child", "check", "--inputs", str(work / "inputs.json"),
                               "--overrides", *args.overrides], 2, work, CHILD_TIMEOUT_S)
    plan = [("trl", ["--child", "trl"], 2),
            (f"alignray_{args.workers}w", ["--child", "alignray", "--workers", str(args.workers)], 2 // args.workers)]
    repeats = run_plan(plan, inputs, args, work)
    ours, theirs = (_harness.best(repeats[name], "pairs_per_s") for name, _, _ in plan[::-1])
    extra = {"ratio": ratio(ours, theirs), "ratio_tokens_per_s": ratio(ours, theirs, "tokens_per_s"),
             "ratio_median_pairs_per_s": ratio(ours, theirs, "median_pairs_per_s"),
             "ratio_compute_pairs_per_s": ratio(ours, theirs, "compute_pairs_per_s"),
             "pairs_per_s": {"alignray": ours["pairs_per_s"], "trl": theirs["pairs_per_s"]},
             "tokens_per_s": {"alignray": ours["tokens_per_s"], "trl": theirs["tokens_per_s"]},
             "loss_check": {k: v for k, v in check.items() if k != "launched_at"}}
    write_record("dpo", args, inputs, extra, repeats, f"DPO {args.workload}: alignray {args.workers}w vs TRL", started)
    return 0 if check["passed"] else 1


def scaling_main(argv: List[str]) -> int:
    """`alignray bench scaling`: our DPO with 1 vs 2 workers on the same global batch."""
    if "--child" in argv:
        return child_main(parse_args(argv))
    started = time.perf_counter()
    args, work, inputs = _setup(argv, "alignray bench scaling")
    plan = [("alignray_1w", ["--child", "alignray", "--workers", "1"], 2),
            ("alignray_2w", ["--child", "alignray", "--workers", "2"], 1)]
    repeats = run_plan(plan, inputs, args, work)
    one, two = (_harness.best(repeats[name], "pairs_per_s") for name, _, _ in plan)
    extra = {"ratio": ratio(two, one), "pairs_per_s": {"1_worker": one["pairs_per_s"], "2_workers": two["pairs_per_s"]}}
    write_record("scaling", args, inputs, extra, repeats, f"DPO {args.workload}: alignray 2 workers vs 1", started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
