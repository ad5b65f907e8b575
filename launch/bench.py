"""`alignray bench <scenario> [args...]`: run a named benchmark from benchmarks/ (a source checkout).

Each scenario module exposes `main(argv: list[str]) -> int` and writes dated results into benchmarks/results/.
Adding a scenario = one line in SCENARIOS.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import List

from framework.errors import UserError

SCENARIOS = {
    "pareto": ("benchmarks.pareto", "Pareto fronts of weighted-sum/MODPO/RACO/PRO, held-out accuracy per objective"),
    "spa": ("benchmarks.spa", "SPA self-annotated rounds: held-out accuracy per round vs DPO on the seed alone"),
    "rps": ("benchmarks.rps", "RPS selection over nearby directions vs sampling at the requested direction only"),
    "lora": ("benchmarks.lora", "LoRA vs full fine-tuning: trainable params, memory per rank, tokens/s at ZeRO-2/3"),
    "isa": ("benchmarks.isa", "ISA 10% vs random 10% vs 100% of the demo pairs: held-out accuracy per training token"),
    "pal": ("benchmarks.pal", "PAL-A/PAL-B vs one BT model: per-user accuracy on simulated disagreeing user groups"),
    "context": ("benchmarks.memory", "DPO memory per rank vs length: TRL (checkpointing) vs alignray's memory options"),
    "memory": ("benchmarks.zero_memory", "ZeRO-0/1/2/3 weights+gradients+optimizer memory per rank, 2 ranks"),
    "listwise": ("benchmarks.listwise", "listwise objective, K=2/4/8: time per step with and without shared prompts"),
    "mfu": ("benchmarks.mfu", "DPO model FLOP/s of a ~22M Llama as a fraction of a measured fp32 matmul peak"),
    "dpo": ("benchmarks.dpo", "DPO pairs/s vs TRL's DPOTrainer, same model/rows/batch/budget (--workload hh|demo)"),
    "scaling": ("benchmarks.scaling", "our DPO pairs/s with 1 vs 2 workers on the same global batch"),
}


def _usage() -> str:
    lines = ["usage: alignray bench <scenario> [args...]   (alignray bench <scenario> --help)", "", "scenarios:"]
    return "\n".join(lines + [f"  {name:<10} {help_}" for name, (_, help_) in SCENARIOS.items()])


def main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    scenario, rest = argv[0], argv[1:]
    if scenario not in SCENARIOS:
        raise UserError(f"unknown benchmark {scenario!r}", f"choose one of {', '.join(SCENARIOS)}")
    checkout = Path(__file__).resolve().parents[1]  # benchmarks/ is not packaged: import it from the checkout
    if (checkout / "benchmarks").is_dir() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        module = importlib.import_module(SCENARIOS[scenario][0])
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("benchmarks"):
            raise
        raise UserError("the benchmarks are not installed with the package",
                        "run alignray bench from a source checkout") from None
    return int(module.main(rest) or 0)
