"""What `alignray eval` leaves behind: `eval.json` (every figure, fingerprints, versions), `report.md` and its
PNG plots (margin histograms, accuracy by response length, per-objective bars). Written into a temp directory
and renamed into place, so a failed evaluation leaves nothing half-written."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

PER_PAIR = ("margins", "reward_margins")  # plotted, not stored: eval.json stays small


def versions() -> Dict[str, str]:
    """Versions of the packages that decide the figures."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("alignray", "torch", "transformers", "ray", "deepspeed"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def finite(value: Any) -> Any:
    """NaN/Inf → None, recursively: eval.json must be strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_report(out_dir: str, result: Dict[str, Any]) -> Path:
    """eval.json, report.md and the plots into `out_dir`, replacing an earlier report there as a whole."""
    import json

    target = Path(out_dir).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        figures = {k: v for k, v in result.items() if k not in PER_PAIR}
        (tmp / "eval.json").write_text(json.dumps(finite(figures), indent=2) + "\n")
        plots = _plots(tmp, result)
        (tmp / "report.md").write_text(markdown(figures, plots))
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _plots(directory: Path, result: Dict[str, Any]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    margins = [(key, result[key]) for key in PER_PAIR if result.get(key)]
    if margins:
        fig, axes = plt.subplots(1, len(margins), figsize=(5 * len(margins), 3.4), squeeze=False)
        titles = {"margins": "log π(y_w) − log π(y_l)", "reward_margins": "implicit reward margin β·Δ(log π − log π_ref)"}
        for ax, (key, values) in zip(axes[0], margins):
            ax.hist(values, bins=40, color="tab:blue", alpha=0.8)
            ax.axvline(0, color="black", lw=1)
            ax.set_title(titles[key], fontsize=9)
            ax.set_ylabel("pairs")
        made.append(_save(fig, directory / "margins.png"))
    if result.get("by_length"):
        fig, ax = plt.subplots(figsize=(5, 3.4))
        bins = result["by_length"]
        ax.bar([f"{b['min_tokens']:.0f}–{b['max_tokens']:.0f}" for b in bins], [b["ranking_accuracy"] for b in bins])
        ax.axhline(0.5, color="black", lw=1, ls="--")
        ax.set(xlabel="mean response tokens of the pair", ylabel="ranking accuracy", ylim=(0, 1))
        made.append(_save(fig, directory / "accuracy_by_length.png"))
    objectives = result.get("objectives") or {}
    if objectives:
        fig, ax = plt.subplots(figsize=(1.6 * len(objectives) + 3, 3.4))
        keys = [k for k in ("ranking_accuracy", "reward_accuracy", "idealized_ranking_accuracy")
                if all(k in v for v in objectives.values())]
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            ax.bar([j + i * width for j in range(len(objectives))], [v[key] for v in objectives.values()], width,
                   label=key)
        ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(objectives))], list(objectives))
        ax.set(ylabel="accuracy", ylim=(0, 1))
        ax.legend(fontsize=7)
        made.append(_save(fig, directory / "objectives.png"))
    return made


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _ci(interval: Optional[List[float]]) -> str:
    if not interval or any(v is None or not math.isfinite(v) for v in interval):
        return ""
    return f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def summary_lines(figures: Dict[str, Any]) -> List[str]:
    """The figures people read first, one per line (printed by `alignray eval`, top of report.md)."""
    lines = [f"pairs: {figures['pairs']}",
             f"ranking accuracy (summed log-probs): {_pct(figures['ranking_accuracy'])}{_ci(figures.get('ranking_accuracy_ci'))}",
             f"ranking accuracy (per-token mean):   {_pct(figures['ranking_accuracy_mean'])}",
             f"mean margin log π(y_w) − log π(y_l): {figures['mean_margin']:.3f}"
             f" (std {figures.get('margin_spread', {}).get('std', float('nan')):.3f})"]
    if "reward_accuracy" in figures:
        lines += [f"implicit-reward accuracy (β={figures['beta']:g}): {_pct(figures['reward_accuracy'])}"
                  f"{_ci(figures.get('reward_accuracy_ci'))}, mean reward margin {figures['mean_reward_margin']:.3f}",
                  f"reference ranking accuracy:          {_pct(figures['reference_ranking_accuracy'])}",
                  f"idealized ranking accuracy (β={figures['beta']:g}, α={figures['alpha']:g}): "
                  f"{_pct(figures['idealized_ranking_accuracy'])}"]
    if "listwise" in figures:
        lw = figures["listwise"]
        lines.append(f"lists: {lw['lists']}, Kendall τ {lw['kendall_tau']:.3f}, NDCG {lw['ndcg']:.3f}")
    if "binary" in figures:
        b = figures["binary"]
        lines.append(f"binary: {b['examples']} examples, AUC {b['auc']:.3f} (per-token {b['auc_mean']:.3f}"
                     + (f", implicit reward {b['reward_auc']:.3f}" if "reward_auc" in b else "") + ")")
    for name, values in (figures.get("objectives") or {}).items():
        lines.append(f"objective {name}: {values['pairs']} pairs, ranking accuracy {_pct(values['ranking_accuracy'])}"
                     + (f", reward accuracy {_pct(values['reward_accuracy'])}" if "reward_accuracy" in values else ""))
    if "judge" in figures:
        j = figures["judge"]
        lines.append(f"judge: win rate {_pct(j['win_rate'])}{_ci(j['win_rate_ci'])} over {j['prompts']} prompts, "
                     f"mean reward {j['mean_reward']:.3f} vs reference {j['reference_mean_reward']:.3f}")
    return lines


def markdown(figures: Dict[str, Any], plots: List[str]) -> str:
    model, reference = figures["model"]["path"], (figures.get("reference") or {}).get("path")
    lines = ["# alignray eval", "", f"- model: `{model}`", f"- reference: `{reference}`" if reference else "- reference: none",
             "- data: " + ", ".join(f"`{d['source']}` ({d['rows']} rows)" for d in figures["data"]), "",
             "## Figures", "", *[f"- {line}" for line in summary_lines(figures)], ""]
    if figures.get("by_length"):
        lines += ["## Ranking accuracy by response length", "", "| mean response tokens | pairs | ranking accuracy |",
                  "|---|---|---|"]
        lines += [f"| {b['min_tokens']:.0f}–{b['max_tokens']:.0f} | {b['pairs']} | {_pct(b['ranking_accuracy'])} |"
                  for b in figures["by_length"]]
        lines.append("")
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots]
    lines += ["", "All figures, fingerprints and versions: `eval.json`. Keys are documented in the README "
              "(\"Evaluation and generation\").", ""]
    return "\n".join(lines)
