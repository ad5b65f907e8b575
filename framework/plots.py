"""A one-page training plot (`<output_dir>/metrics.png`) from `metrics.jsonl`: loss, reward accuracy and margin,
chosen/rejected log-probs (falling chosen log-probs while the margin rises = likelihood displacement), throughput;
for multi-objective runs also each objective's accuracy and the gradient-combination coefficients."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

PANELS = [
    ("loss", ["loss"]),
    ("rewards", ["rewards/accuracy", "rewards/margin"]),
    ("log-probs", ["logps/chosen", "logps/rejected"]),
    ("held-out accuracy", ["eval/policy_accuracy", "eval/policy_accuracy_mean", "eval/reward_accuracy"]),
    ("throughput (tokens/s)", ["tokens_per_s"]),
]
SMOOTH = 10  # steps in the running mean of the noisy per-objective accuracies


def _multi_objective_panels(keys: List[str]) -> List[tuple]:
    """Per-objective accuracy (`<objective>/accuracy`), coefficient (`mo/coef/<objective>`) and PRO's mean
    per-prompt weight (`pro/weight/<objective>`) panels."""
    accuracies = sorted(k for k in keys if k.endswith("/accuracy") and k.count("/") == 1
                        and not k.startswith(("rewards/", "eval/")))
    coefficients = sorted(k for k in keys if k.startswith("mo/coef/"))
    prompt_weights = sorted(k for k in keys if k.startswith("pro/weight/")) + (["pro/weight_entropy"] if "pro/weight_entropy" in keys else [])
    panels = [(f"objective accuracy ({SMOOTH}-step mean)", accuracies)] if accuracies else []
    panels += [("gradient coefficients", coefficients)] if coefficients else []
    return panels + ([("PRO prompt weights (batch mean) and entropy", prompt_weights)] if prompt_weights else [])


def _running_mean(values: List[float], window: int) -> List[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_metrics(metrics_file: Path, out: Optional[Path] = None, title: str = "") -> Optional[Path]:
    """Write the plot next to the metrics; returns its path, or None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    by_step: Dict[int, dict] = {r["step"]: r for r in rows if "loss" in r}  # replayed steps: the last wins
    steps = sorted(by_step)
    present = sorted({k for s in steps for k in by_step[s]})
    layout = PANELS[:-1] + _multi_objective_panels(present) + PANELS[-1:]
    panels = [(name, [k for k in keys if k in present]) for name, keys in layout]
    panels = [(name, keys) for name, keys in panels if keys]
    if not steps or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (name, keys) in zip(list(getattr(axes, "flat", [axes])), panels):
        for key in keys:
            xs: List[int] = [s for s in steps if key in by_step[s]]
            ys = [by_step[s][key] for s in xs]
            ax.plot(xs, _running_mean(ys, SMOOTH) if name.startswith("objective accuracy") else ys,
                    label=key, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out or Path(metrics_file).with_name("metrics.png"))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
