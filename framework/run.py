"""One training run end to end: validated config → data prep → Ray Train fit → HF export → summary."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Any, Dict

from framework.config import RunConfig

log = logging.getLogger(__name__)


def train(cfg: RunConfig) -> Dict[str, Any]:
    """Run training; returns the summary (also written to `<output_dir>/summary.json`)."""
    from framework.cluster import feasibility, interrupt, launcher
    from framework.cluster.checkpoints import checkpoint_name
    from framework.data_prep import check_inputs, prepare

    check_inputs(cfg)  # paths, data and models the user named: a typo fails in a second, with one line
    if cfg.objective_name == "pal_reward":  # a head on frozen embeddings, no Ray Train fit: framework/cluster/pal.py
        from framework.cluster.pal import train_from_config

        return train_from_config(cfg)
    feasibility.check_embedded(cfg)  # before data prep and Ray: an impossible run is refused at once
    started = time.perf_counter()
    output = Path(cfg.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.jsonl").unlink(missing_ok=True) if not cfg.resume else None
    prepared = prepare(cfg)  # before Ray starts: store builds fork tokenizer workers
    result = _fit(launcher, cfg, prepared)
    summary = summarise(output, result, time.perf_counter() - started)
    summary["plot"] = _plot(output, cfg)
    signum = interrupt.requested_signal()
    reached = _last_step(output)
    if signum is not None and reached < cfg.train.max_steps:
        # Stopped by SIGINT/SIGTERM: `checkpoint` is the newest one to resume from (not exported).
        saved = result.checkpoint is not None and Path(result.checkpoint.path).name == checkpoint_name(reached)
        summary["interrupted"] = {"signal": signal.Signals(signum).name, "step": reached, "checkpoint_at_stop": saved}
    elif cfg.train.export and result.checkpoint is not None:
        summary["export"] = str(export(cfg, prepared, result.checkpoint))
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _fit(launcher: Any, cfg: RunConfig, prepared: Any) -> Any:
    """Ray Train raises a worker's error wrapped (WorkerGroupError); a user error inside it is raised as itself,
    so the CLI still shows it as one line."""
    from framework.errors import find_user_error

    try:
        result = launcher.fit(cfg, prepared)
        if result.error is not None:
            raise result.error
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None or user_error is error:
            raise
        raise user_error from error
    return result


def _plot(output: Path, cfg: RunConfig) -> Any:
    from framework.plots import plot_metrics

    try:
        path = plot_metrics(output / "metrics.jsonl", title=f"{cfg.objective_name} · {cfg.cluster.num_workers} workers · "
                                                              f"ZeRO-{cfg.deepspeed.zero_stage}")
    except Exception as err:  # a plot must never fail a finished run
        log.warning("could not draw the metrics plot: %s", err)
        return None
    return str(path) if path else None


def export(cfg: RunConfig, prepared: Any, checkpoint: Any) -> Path:
    from framework.engine.seam import consolidated_state_dict
    from framework.model.export import export_hf
    from framework.objectives import objective_class

    with checkpoint.as_directory() as directory:
        state = consolidated_state_dict(directory)
    reward_model = "rewards" in objective_class(cfg.objective_name).requires
    out = str(Path(cfg.output_dir) / "export")
    if cfg.model.uses_lora:  # the checkpoint holds the adapter only: merged model + peft adapter dir
        from framework.model.lora import export_lora

        return export_lora(state, prepared.model_path, prepared.tokenizer_path, cfg.model.lora, out, reward_model)
    return export_hf(state, prepared.model_path, prepared.tokenizer_path, out, reward_model=reward_model)


def summarise(output: Path, result: Any, wall: float) -> Dict[str, Any]:
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows if "loss" in r}  # after a restart, replayed steps: keep the last
    steps = [by_step[k] for k in sorted(by_step)]
    start = next((r for r in rows if "eval/policy_accuracy@start" in r), {})
    end = next((r for r in reversed(rows) if "eval/policy_accuracy" in r), {})
    tail = steps[len(steps) // 2 :] or steps
    summary: Dict[str, Any] = {
        "steps": len(steps),
        "wall_time_s": round(wall, 1),
        "tokens_per_s": round(sum(r["tokens_per_s"] for r in tail) / max(1, len(tail)), 1),
        "tokens_per_s_wall": _wall_rate(steps),
        "final_loss": steps[-1]["loss"] if steps else None,
        "skipped_steps": steps[-1].get("skipped_steps", 0) if steps else 0,
        "eval_accuracy_start": start.get("eval/policy_accuracy@start"),
        "eval_accuracy_end": end.get("eval/policy_accuracy"),
        "eval_reward_accuracy_end": end.get("eval/reward_accuracy"),
        "eval_accuracy_mean_start": start.get("eval/policy_accuracy_mean@start"),
        "eval_accuracy_mean_end": end.get("eval/policy_accuracy_mean"),
        # depends on the reference and the data only: the same at start and end
        "eval_idealized_accuracy": end.get("eval/idealized_accuracy", start.get("eval/idealized_accuracy@start")),
        "eval_end": {k: v for k, v in end.items() if k.startswith("eval/")},  # incl. per-objective accuracies
        "checkpoint": result.checkpoint.path if result.checkpoint is not None else None,
        "metrics": str(output / "metrics.jsonl"),
        "tensorboard": str(output / "tensorboard"),
    }
    return summary


def _last_step(output: Path) -> int:
    """The last optimizer step in metrics.jsonl (step lines carry `lr`; a non-finite step has no loss)."""
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max((int(r["step"]) for r in rows if "lr" in r), default=0)


def _wall_rate(steps: list) -> Any:
    """Tokens per second between the first and last step's end (includes data, logging, reporting, saving)."""
    timed = [r for r in steps if "wall_clock" in r]
    if len(timed) < 2 or timed[-1]["wall_clock"] <= timed[0]["wall_clock"]:
        return None
    return round(sum(r["tokens"] for r in timed[1:]) / (timed[-1]["wall_clock"] - timed[0]["wall_clock"]), 1)


def format_summary(summary: Dict[str, Any]) -> str:
    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    if summary.get("objective") == "pal_reward":
        from framework.cluster.pal import format_summary as format_pal

        return format_pal(summary)
    lines = ["", "alignray run summary"]
    if summary["eval_accuracy_end"] is None:
        lines.append("  held-out preference accuracy: not measured (no held-out pairs; set data.eval=PATH)")
    else:
        lines.append(f"  held-out preference accuracy (policy log-prob margin > 0): {pct(summary['eval_accuracy_start'])}"
                     f" before -> {pct(summary['eval_accuracy_end'])} after")
    if summary.get("eval_accuracy_mean_end") is not None:
        lines.append(f"  held-out ranking accuracy with per-token mean log-probs: {pct(summary.get('eval_accuracy_mean_start'))}"
                     f" before -> {pct(summary['eval_accuracy_mean_end'])} after")
    if summary.get("eval_idealized_accuracy") is not None:
        lines.append(f"  idealized ranking accuracy (Chen et al. 2024; what the exact optimum would reach): "
                     f"{pct(summary['eval_idealized_accuracy'])}")
    if summary.get("eval_reward_accuracy_end") is not None:
        lines.append(f"  held-out implicit-reward accuracy after training: {pct(summary['eval_reward_accuracy_end'])}")
    lines += [
        f"  steps: {summary['steps']} (skipped non-finite: {summary['skipped_steps']}), final loss {summary['final_loss']:.4f}"
        if summary["final_loss"] is not None else f"  steps: {summary['steps']}",
        f"  wall time: {summary['wall_time_s']:.1f} s, throughput: {summary['tokens_per_s']:.0f} tokens/s in steps"
        + (f", {summary['tokens_per_s_wall']:.0f} tokens/s end to end" if summary.get("tokens_per_s_wall") else "")
        + " (all workers)",
        f"  HF export:  {summary.get('export', 'not written')}",
        f"  checkpoint: {summary['checkpoint']}",
        f"  metrics:    {summary['metrics']}  (TensorBoard: {summary['tensorboard']})",
    ]
    if summary.get("plot"):
        lines.append(f"  plot:       {summary['plot']}")
    stop = summary.get("interrupted")
    if stop:
        saved = "checkpoint written" if stop["checkpoint_at_stop"] else "no checkpoint written at this step"
        lines.append(f"  interrupted by {stop['signal']} after step {stop['step']}: {saved}")
    return "\n".join(lines)
