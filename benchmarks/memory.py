"""Memory per rank for long-sequence DPO (issue 14): TRL's DPOTrainer against alignray's memory options, and the
longest sequence each trains within a fixed per-rank memory budget.

    alignray bench context [--lengths 512,1024,...] [--budget-mib 1024] [--vocab 32000] [--hidden 128] [--layers 2]

One DPO pair (chosen and rejected, each exactly L tokens) per step on a small Llama built from a config (32k
vocabulary: at long lengths the [2, L, vocab] logits are what runs out first), fp32, CPU, one thread per rank.
Each (system, length) runs one optimizer step in fresh processes. Measured per rank: peak RSS (getrusage
ru_maxrss) minus the RSS after imports, i.e. the memory the model, optimizer and the step need, without the
libraries' import footprint (which differs between TRL and alignray and does not grow with L). The ladder of a
system stops at its first length over the budget (memory only grows with L).

Systems: TRL DPOTrainer with gradient_checkpointing=True (live reference copy, its default); alignray with the
plain path (ZeRO-2, live reference, no checkpointing, no tiling); alignray "lean" (ZeRO-3, checkpointing, tiled
log-probs, stored reference log-probs) on 1 rank; and lean + Ulysses SP=2 on 2 ranks. alignray runs its real
seam (DeepSpeed engine) and StepRunner without Ray (Ray's workers add a constant, not a length-dependent cost).
Writes memory-<date>.json/.png into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CHILD_TIMEOUT_S = 900
SYSTEMS = {  # name → (runner, ranks, options)
    "trl-gc": ("trl", 1, {}),
    "alignray-plain": ("alignray", 1, {"zero": 2, "checkpointing": False, "tile_above": 0, "stored": False}),
    "alignray-lean": ("alignray", 1, {"zero": 3, "checkpointing": True, "tile_above": 1024, "stored": True}),
    "alignray-lean-sp2": ("alignray", 2, {"zero": 3, "checkpointing": True, "tile_above": 1024, "stored": True}),
}


def _import_libraries() -> None:
    """Every child imports the same libraries before its baseline, so the difference is the training's own."""
    import datasets  # noqa: F401
    import deepspeed  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401  (lazy module)


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def _record(path: str, baseline: float) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    Path(path).write_text(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "training_mib": peak - baseline}))


# -- children ----------------------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace) -> None:
    import datasets
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    _import_libraries()
    baseline = _rss_mib()
    transformers.logging.set_verbosity_error()
    words = " ".join(["yes", "no", "maybe", "apple", "blue"] * args.length)  # longer than L: truncated to L
    rows = [{"prompt": "question", "chosen": words, "rejected": words[::-1]}] * 4
    config = DPOConfig(output_dir=str(Path(args.out) / "trl"), max_steps=1, per_device_train_batch_size=1,
                       max_length=args.length, truncation_mode="keep_start", learning_rate=1e-4, use_cpu=True,
                       gradient_checkpointing=True, optim="adamw_torch", save_strategy="no", report_to="none",
                       logging_steps=1, disable_tqdm=True, model_init_kwargs={"dtype": torch.float32})
    trainer = DPOTrainer(model=args.model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=transformers.AutoTokenizer.from_pretrained(args.model))
    trainer.train()
    _record(args.result.format(rank=0), baseline)


def _alignray_rank(rank: int, args: argparse.Namespace, port: int, options: Dict[str, Any]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.ranks), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import torch

    torch.set_num_threads(1)
    from transformers import AutoConfig

    from framework.config import DeepSpeedConfig, TrainConfig
    from framework.engine import sequence_parallel
    from framework.engine.batches import MicroBatch
    from framework.engine.seam import DeepSpeedSeam
    from framework.engine.step import StepRunner
    from framework.model.batching import collate
    from framework.model.loading import enable_gradient_checkpointing, load_causal_lm
    from framework.objectives import build_objective

    _import_libraries()
    baseline = _rss_mib()
    train = TrainConfig(micro_batch_size=1, max_steps=2, warmup_steps=0, lr=1e-4)
    seam = DeepSpeedSeam(DeepSpeedConfig(zero_stage=options["zero"]), train, torch.device("cpu"), "gloo")
    seam.init_distributed()
    if args.ranks > 1:
        sequence_parallel.install(AutoConfig.from_pretrained(args.model), args.ranks)
    with seam.model_loading():
        policy = load_causal_lm(args.model)
        reference = None if options["stored"] else load_causal_lm(args.model)
    if options["checkpointing"]:
        enable_gradient_checkpointing(policy)
    engine = seam.wrap_policy(policy, train.max_steps)
    engine.train()
    if reference is not None:
        reference = seam.wrap_reference(reference)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (3, args.length), generator=generator).tolist()
    tokens = collate([ids[0][:8]], [[ids[1][8:], ids[2][8:]]], pad_id=0, max_length=args.length, max_prompt_length=8)
    stored = {"logps": torch.zeros(1, 2), "lengths": torch.zeros(1, 2)} if options["stored"] else None
    batch = MicroBatch(tokens, {"mask": tokens.valid}, torch.ones(1), stored)
    runner = StepRunner(seam, engine, reference, build_objective("dpo"), 0, args.length, 8,
                        tile_above=options["tile_above"])
    runner.train_step([batch])
    _record(args.result.format(rank=rank), baseline)
    seam.barrier()  # tear down together: a rank exiting with gloo pairs still open aborts the other
    torch.distributed.destroy_process_group()


def run_alignray(args: argparse.Namespace) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = SYSTEMS[args.system][2]
    mp.start_processes(_alignray_rank, args=(args, port, options), nprocs=args.ranks, start_method="spawn", join=True)


# -- parent ------------------------------------------------------------------------------------------------
def build_model(out: Path, vocab: int, hidden: int, layers: int) -> str:
    """A small Llama with a real-size vocabulary and the demo tokenizer (ids above its vocabulary stay unused)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from framework.model.demo import demo_tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_path())
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=65536,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return str(out / "model")


def measure(system: str, length: int, model: str, out: Path) -> Optional[Dict[str, Any]]:
    """One step of `system` at `length` in fresh processes: per-rank memory, or None if it failed (e.g. OOM)."""
    runner, ranks, _ = SYSTEMS[system]
    name = f"{system}-{length}"
    result = str(out / f"{name}-rank{{rank}}.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", runner, "--system", system, "--ranks", str(ranks),
           "--length", str(length), "--model", model, "--out", str(out), "--result", result]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=open(out / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    try:
        code = proc.wait(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's group only
        code = -1
    files = [Path(result.format(rank=r)) for r in range(ranks)]
    if code != 0 or not all(f.exists() for f in files):
        print(f"[{name}] failed (exit {code}); log: {out / f'{name}.log'}", file=sys.stderr, flush=True)
        return None
    per_rank = [json.loads(f.read_text()) for f in files]
    row = {"system": system, "length": length, "ranks": ranks,
           "training_mib": round(max(r["training_mib"] for r in per_rank), 1),
           "peak_rss_mib": round(max(r["peak_mib"] for r in per_rank), 1),
           "baseline_mib": round(max(r["baseline_mib"] for r in per_rank), 1)}
    print(f"[{name}] {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def plot(rows: List[Dict[str, Any]], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in SYSTEMS:
        points = sorted((r["length"], r["training_mib"]) for r in rows if r["system"] == system)
        if points:
            ax.plot(*zip(*points), marker="o", label=system)
    ax.axhline(budget, color="grey", linestyle="--", label=f"budget {budget:.0f} MiB")
    ax.set(yscale="log", xlabel="tokens per sequence (chosen and rejected each)",
           ylabel="peak RSS − RSS after imports, MiB per rank", title="DPO memory per rank vs sequence length")
    ax.set_xscale("log", base=2)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench context", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--budget-mib", type=float, default=2048.0)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args(argv)
    from benchmarks._harness import environment

    out = Path(args.out or tempfile.mkdtemp(prefix="alignray-bench-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(out, args.vocab, args.hidden, args.layers)
    lengths = sorted(int(x) for x in args.lengths.split(","))
    rows, longest, capped = [], {}, {}
    for system in args.systems.split(","):
        longest[system], capped[system] = 0, True
        for length in lengths:
            row = measure(system, length, model, out)
            if row is not None:
                rows.append(row)
            if row is None or row["training_mib"] > args.budget_mib:
                capped[system] = False
                break
            longest[system] = length
    best = max((k for k in longest if k.startswith("alignray")), key=lambda k: longest[k], default=None)
    ratio = longest[best] / longest["trl-gc"] if best and longest.get("trl-gc") else None
    date = dt.date.today().isoformat()
    report = {"date": date, "budget_mib": args.budget_mib, "lengths": lengths, "rows": rows,
              "longest_within_budget": longest, "longest_ratio_vs_trl": ratio, "best_alignray": best,
              # True: the system stayed within the budget up to the longest length run (its limit is higher)
              "within_budget_at_every_length": capped,
              "model": {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "heads": 4, "kv_heads": 2},
              "measure": "per rank: peak RSS (getrusage) minus RSS after imports; one DPO pair, one optimizer step",
              "environment": environment()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"memory-{date}.json").write_text(json.dumps(report, indent=2))
    plot(rows, args.budget_mib, RESULTS / f"memory-{date}.png")
    print(json.dumps({"longest_within_budget": longest, "longest_ratio_vs_trl": ratio,
                      "within_budget_at_every_length": capped}, indent=2))
    return 0


def child_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser()
    for name in ("--child", "--system", "--model", "--out", "--result"):
        parser.add_argument(name, required=True)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--length", type=int, required=True)
    args = parser.parse_args(argv)
    (run_trl if args.child == "trl" else run_alignray)(args)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
