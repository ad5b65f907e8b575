"""Pareto fronts of multi-objective training: weighted sum, MODPO, RACO and PRO on the same data (issue 9).

    alignray bench pareto [--methods weighted_sum,modpo,raco,pro,pro_random] [--grid 5] [--steps 150] [--data FILE]
                          [--out DIR] [HYDRA_OVERRIDE ...]

Each method trains the tiny demo model (1 Ray Train worker, ZeRO-2, fixed seed) once per user weight vector of
the grid (w_1 ∈ {0, 1/(g−1), …, 1} for two objectives; the simplex lattice for more) and is scored on held-out
pairs per objective: the implicit reward ρ = log π − log π_ref orders the pair as that objective does (ties left
out). Methods without user weights (PRO: per-prompt weights from its orchestrator; `pro_random`: half the training
rows with random weights in context) give one point, and their one policy is then re-scored with each grid vector
written in its prompts (`<method>_in_context`: does it follow user weights at deployment?). Each method's
non-dominated points form its front; its hypervolume is measured in per-objective reward-accuracy space w.r.t.
the reference point 0 (exact, any number of objectives). Data: the demo's multi-objective rows ("topic" vs
"brevity", conflicting on ~80% of rows) or `--data FILE` (any multi JSONL the store ingests, e.g. PKU-SafeRLHF
shaped), of which a seeded 10% is held out unless `--eval FILE` is given. All runs share one embedded Ray.
Writes pareto-<date>.json and .png into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger("alignray.bench.pareto")
RESULTS = Path(__file__).resolve().parent / "results"
SEED, DEMO_TRAIN_ROWS, DEMO_EVAL_ROWS, HELD_OUT = 0, 2000, 256, 0.1
Weights = Tuple[float, ...]
Point = Tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Method:
    """How one method is trained: its objective and the Hydra overrides for a user weight vector (None: the
    method takes no user weights and is trained once)."""

    objective: str
    overrides: Optional[Callable[[Weights], List[str]]]
    extra: Tuple[str, ...] = ("train.export=false",)  # overrides of every run of the method


def _weights(w: Weights) -> List[str]:
    return [f"objective.weights=[{','.join(f'{x:g}' for x in w)}]"]


def _modpo(w: Weights) -> List[str]:
    """MODPO trains on the preferences of one target objective: the one with the largest weight (the first on a
    tie), which is then > 0 as MODPO requires; an objective with weight 0 contributes no margin reward, so at a
    vertex MODPO is plain DPO on that objective."""
    return _weights(w) + [f"objective.target={max(range(len(w)), key=lambda i: (w[i], -i))}"]


METHODS: Dict[str, Method] = {
    "weighted_sum": Method("weighted_sum", _weights),
    "modpo": Method("modpo", _modpo),
    "raco": Method("raco", _weights),
    # Exported: re-scored with each grid weight vector written in its prompts ("<method>_in_context").
    "pro": Method("pro", None, ("train.export=true",)),
    # Half the training rows get random simplex weights in context (and in the loss): does the policy then read them?
    "pro_random": Method("pro", None, ("train.export=true", "objective.random_weights=0.5")),
}
IN_CONTEXT = "_in_context"


# -- fronts ------------------------------------------------------------------------------------------------
def dominates(a: Point, b: Point) -> bool:
    """a Pareto-dominates b (maximisation): at least as good everywhere and better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated(points: Sequence[Point]) -> List[Point]:
    """The distinct points no other point dominates, sorted."""
    unique = sorted(set(map(tuple, points)))
    return [p for p in unique if not any(dominates(q, p) for q in unique)]


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Volume of the region dominated by `points` and dominating `reference` (maximisation), exact in any
    dimension: slabs along the last axis, each the (M−1)-dimensional volume of the points above it."""
    kept = sorted((p for p in non_dominated(points) if all(x > r for x, r in zip(p, reference))), key=lambda p: -p[-1])
    if not kept:
        return 0.0
    if len(reference) == 1:
        return kept[0][0] - reference[0]
    volume = 0.0
    for i, point in enumerate(kept):
        floor = kept[i + 1][-1] if i + 1 < len(kept) else reference[-1]
        if point[-1] > floor:
            volume += (point[-1] - floor) * hypervolume([p[:-1] for p in kept[: i + 1]], reference[:-1])
    return volume


def coverage(a: Sequence[Point], b: Sequence[Point]) -> float:
    """Share of b's points that some point of a weakly dominates (Zitzler's C(a, b))."""
    return sum(any(all(x >= y for x, y in zip(p, q)) for p in a) for q in b) / max(len(b), 1)


def weight_grid(size: int, objectives: int) -> List[Weights]:
    """Every weight vector on the simplex with coordinates in multiples of 1/(size − 1)."""
    if size < 2:
        raise ValueError(f"--grid must be >= 2, got {size}")
    steps = size - 1
    grid = [c for c in itertools.product(range(steps + 1), repeat=objectives) if sum(c) == steps]
    return [tuple(round(x / steps, 6) for x in c) for c in sorted(grid, reverse=True)]


# -- data --------------------------------------------------------------------------------------------------
def prepare_data(out: Path, data: Optional[str], eval_data: Optional[str]) -> Dict[str, Any]:
    """(train JSONL, held-out JSONL, objective names, description)."""
    from framework import demo_data
    from framework.store.normalize import normalise

    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        train = demo_data.write_jsonl(demo_data.multi(DEMO_TRAIN_ROWS, seed=1), out / "train.jsonl")
        held_out = demo_data.write_jsonl(demo_data.multi(DEMO_EVAL_ROWS, seed=2), out / "eval.jsonl")
        source = f"framework.demo_data.multi: {DEMO_TRAIN_ROWS} train rows (seed 1), {DEMO_EVAL_ROWS} held-out (seed 2)"
    elif eval_data is not None:
        train, held_out, source = Path(data), Path(eval_data), f"{data}; held out: {eval_data}"
    else:
        lines = [line for line in Path(data).read_text().splitlines() if line.strip()]
        random.Random(SEED).shuffle(lines)
        cut = max(1, int(len(lines) * HELD_OUT))
        (out / "eval.jsonl").write_text("\n".join(lines[:cut]) + "\n")
        (out / "train.jsonl").write_text("\n".join(lines[cut:]) + "\n")
        train, held_out = out / "train.jsonl", out / "eval.jsonl"
        source = f"{data}: {len(lines) - cut} train rows, {cut} held out (seeded {HELD_OUT:.0%} split)"
    first = json.loads(next(line for line in Path(train).read_text().splitlines() if line.strip()))
    example = normalise(first, kind="multi")
    names = example.get("objective_names") if isinstance(example, dict) else None
    if not names:
        raise ValueError(f"{train}: the first row is not a multi-objective row ({example})")
    return {"train": str(train), "eval": str(held_out), "objectives": list(names), "source": source}


# -- runs --------------------------------------------------------------------------------------------------
def plan(methods: Sequence[str], grid: List[Weights]) -> List[Dict[str, Any]]:
    """One entry per training run; a method whose objective is not registered is skipped with a log line."""
    from framework.objectives import objective_class

    runs = []
    for name in methods:
        method = METHODS[name]
        try:
            objective_class(method.objective)
        except (KeyError, ValueError):
            log.warning("skipping %s: objective %r is not registered", name, method.objective)
            continue
        for weights in grid if method.overrides else [None]:
            label = name if weights is None else f"{name}-" + "-".join(f"{w:g}" for w in weights)
            overrides = [f"objective={method.objective}", *method.extra] + (method.overrides(weights) if weights else [])
            runs.append({"name": label, "method": name, "weights": weights, "overrides": overrides})
    return runs


def train_one(run: Dict[str, Any], out: Path, common: List[str]) -> Dict[str, Any]:
    """Train one run in this process (Ray stays up between runs) and read its held-out evaluation."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from framework.config import from_dict
    from framework.run import train

    overrides = [f"output_dir={out / 'runs' / run['name']}", *run["overrides"], *common]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = compose(config_name="config", overrides=overrides)
    started = time.perf_counter()
    summary = train(from_dict(OmegaConf.to_container(raw, resolve=True)))
    return {**run, "overrides": overrides, "config": OmegaConf.to_container(raw, resolve=True),
            "eval": summary["eval_end"], "final_loss": summary["final_loss"], "steps": summary["steps"],
            "wall_time_s": round(time.perf_counter() - started, 1)}


class _OneProcess:
    """What `evaluate_pairs` needs of the DeepSpeed seam, for a model evaluated in this process."""

    device = None

    @staticmethod
    def all_reduce_sum(tensor: Any) -> Any:
        return tensor


def in_context_points(pro_run: Dict[str, Any], grid: List[Weights], objectives: List[str]) -> List[Dict[str, Any]]:
    """PRO's exported policy scored on its held-out store with each user weight vector `w` of the grid written in
    every prompt (the weights-in-context format) instead of the adapter's: does the policy follow the weights?"""
    import torch

    from framework.engine.batches import BatchBuilder
    from framework.engine.step import evaluate_pairs
    from framework.model.demo import demo_model_path
    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.model.orchestrator import context_prompt_ids, round_weights
    from framework.store import open_store

    config, run_dir = pro_run["config"], Path(pro_run["config"]["output_dir"])
    data = config["data"]
    policy = load_causal_lm(str(run_dir / "export")).eval()
    reference = load_causal_lm(config["model"]["path"] or demo_model_path()).eval()
    tokenizer = load_tokenizer(str(run_dir / "export"))
    table = open_store(str(run_dir / "store" / "eval")).table()
    builder = BatchBuilder(tokenizer.pad_token_id, data["max_length"], data["max_prompt_length"], "multi", False,
                           ("context_prompts",))
    _OneProcess.device = torch.device("cpu")
    points = []
    for weights in grid:
        w = round_weights(weights)
        ids = [context_prompt_ids(tokenizer, objectives, w, p, data["max_prompt_length"])
               for p in table.column("prompt_ids").to_pylist()]
        fixed = table.set_column(table.column_names.index("context_prompt_ids"), "context_prompt_ids", [ids])
        batches = [builder.build(fixed.slice(i, 32), [False] * min(32, fixed.num_rows - i))
                   for i in range(0, fixed.num_rows, 32)]
        with torch.no_grad():
            ev = evaluate_pairs(_OneProcess, policy, reference, batches)
        method = pro_run["method"] + IN_CONTEXT
        points.append({"name": f"{method}-" + "-".join(f"{x:g}" for x in weights), "method": method,
                       "weights": weights, "eval": ev, "from_run": pro_run["name"]})
    return points


def fronts(runs: List[Dict[str, Any]], objectives: List[str], reference: Point) -> Dict[str, Any]:
    """Per method: every point (held-out reward accuracy per objective), its front and the front's hypervolume."""
    out: Dict[str, Any] = {}
    for run in runs:
        point = tuple(run["eval"][f"eval/{name}/reward_accuracy"] for name in objectives)
        out.setdefault(run["method"], {"points": []})["points"].append(point)
    for entry in out.values():
        entry["front"] = non_dominated(entry["points"])
        entry["hypervolume"] = round(hypervolume(entry["front"], reference), 6)
    return out


def verdicts(by_method: Dict[str, Any], runs: List[Dict[str, Any]], objectives: List[str]) -> Dict[str, Any]:
    """RACO's front against weighted-sum's; PRO's overall-label accuracy against the best fixed-weight run; whether
    PRO's policy follows user weights written in its prompts."""
    out: Dict[str, Any] = {}
    if "raco" in by_method and "weighted_sum" in by_method:
        raco, ws = by_method["raco"]["front"], by_method["weighted_sum"]["front"]
        out["raco_vs_weighted_sum"] = {
            "raco_front_dominates": coverage(raco, ws) == 1.0 and set(raco) != set(ws),
            "weighted_sum_front_dominates": coverage(ws, raco) == 1.0 and set(raco) != set(ws),
            "coverage_raco_over_ws": coverage(raco, ws), "coverage_ws_over_raco": coverage(ws, raco),
            "hypervolume": {m: by_method[m]["hypervolume"] for m in ("raco", "weighted_sum")}}
    pro = [r for r in runs if r["method"] == "pro"]
    fixed = [r for r in runs if r["weights"] is not None and not r["method"].endswith(IN_CONTEXT)
             and "eval/overall/reward_accuracy" in r["eval"]]
    if pro and fixed and "eval/overall/reward_accuracy" in pro[0]["eval"]:
        best = max(fixed, key=lambda r: r["eval"]["eval/overall/reward_accuracy"])
        pro_acc = pro[0]["eval"]["eval/overall/reward_accuracy"]
        pro_point = by_method["pro"]["points"][0]
        out["pro_vs_best_fixed_weights"] = {
            "metric": "held-out reward accuracy on the overall human label", "pro": pro_acc,
            "best_fixed": best["eval"]["eval/overall/reward_accuracy"], "best_fixed_run": best["name"],
            "pro_beats_best_fixed": pro_acc > best["eval"]["eval/overall/reward_accuracy"],
            "pro_point_dominated_by_a_fixed_front": any(dominates(p, pro_point) for m, e in by_method.items()
                                                        if METHODS.get(m, METHODS["pro"]).objective != "pro"
                                                        for p in e["front"])}
    for method in [m for m in by_method if m.endswith(IN_CONTEXT)]:  # accuracy with all vs no weight in context
        points = {tuple(r["weights"]): r["eval"] for r in runs if r["method"] == method}
        out[f"{method}_follows_weights"] = {
            name: {"weight_1": points[vertex][f"eval/{name}/reward_accuracy"],
                   "weight_0": points[opposite][f"eval/{name}/reward_accuracy"]}
            for name, vertex, opposite in _vertices(list(points), objectives)}
    return out


def _vertices(weights: List[Weights], objectives: List[str]) -> List[tuple]:
    """(objective, its one-hot weight vector, a vector giving it weight 0) for objectives whose vertex is in the grid."""
    out = []
    for i, name in enumerate(objectives):
        vertex = tuple(1.0 if j == i else 0.0 for j in range(len(objectives)))
        opposite = next((w for w in weights if w[i] == 0.0), None)
        if vertex in weights and opposite is not None:
            out.append((name, vertex, opposite))
    return out


def plot(by_method: Dict[str, Any], objectives: List[str], path: Path, title: str) -> Path:
    """Fronts as staircase lines, every run as a marker; axes = the first two objectives' held-out reward accuracy
    (the staircase is exact for two objectives; with more, it is the front's projection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for colour, (method, entry) in zip(plt.get_cmap("tab10").colors, by_method.items()):
        xs, ys = zip(*[(p[0], p[1]) for p in entry["points"]])
        ax.scatter(xs, ys, color=colour, alpha=0.6, s=30)
        front = sorted(entry["front"])
        # The front's attainment staircase: the boundary of the region its hypervolume measures.
        ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color=colour, drawstyle="steps-pre",
                label=f"{method} (HV {entry['hypervolume']:.3f})")
    ax.set_xlabel(f"held-out reward accuracy: {objectives[0]}")
    ax.set_ylabel(f"held-out reward accuracy: {objectives[1]}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench pareto", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--grid", type=int, default=5,
                        help="weights per objective axis (2 objectives: w_1 ∈ linspace(0, 1, grid))")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--data", help="multi-objective JSONL to train on (default: the built-in demo rows)")
    parser.add_argument("--eval", help="held-out JSONL for --data (default: a seeded 10%% of --data)")
    parser.add_argument("--out", help=f"directory for the JSON and PNG (default {RESULTS})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. train.lr=5e-4")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = Path(tempfile.mkdtemp(prefix="alignray-pareto-"))
    data = prepare_data(work / "data", args.data, args.eval)
    common = [f"data.train={data['train']}", f"data.eval={data['eval']}", f"train.max_steps={args.steps}",
              f"train.seed={SEED}", "cluster.num_workers=1", "cluster.cpus_per_worker=2", "deepspeed=zero2",
              "train.eval_at_start=false", *args.overrides]
    grid = weight_grid(args.grid, len(data["objectives"]))
    done = run_all(plan(methods, grid), work, common)
    for run in [r for r in done if METHODS[r["method"]].objective == "pro" and "error" not in r]:
        done += in_context_points(run, grid, data["objectives"])
    return report(done, data, args, common, work)


def run_all(runs: List[Dict[str, Any]], work: Path, common: List[str]) -> List[Dict[str, Any]]:
    from framework.cluster.launcher import shutdown

    done = []
    try:
        for index, run in enumerate(runs, 1):
            try:
                done.append(train_one(run, work, common))
            except Exception as error:  # one failed run must not lose the sweep: it is recorded and left out
                log.exception("[%d/%d] %s failed", index, len(runs), run["name"])
                done.append({**run, "error": f"{type(error).__name__}: {error}"})
                continue
            accuracies = {k: round(v, 3) for k, v in done[-1]["eval"].items() if k.endswith("reward_accuracy")}
            log.info("[%d/%d] %s %s (%.0f s)", index, len(runs), run["name"], accuracies, done[-1]["wall_time_s"])
    finally:
        shutdown()
    return done


def report(runs: List[Dict[str, Any]], data: Dict[str, Any], args: argparse.Namespace, common: List[str],
           work: Path) -> int:
    from benchmarks._harness import environment

    objectives, reference = data["objectives"], (0.0,) * len(data["objectives"])
    trained = [run for run in runs if "error" not in run]
    by_method = fronts(trained, objectives, reference)
    stamp = dt.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    title = f"held-out per-objective reward accuracy · {args.steps} steps · {stamp}"
    png = plot(by_method, objectives, out / f"pareto-{stamp}.png", title) if len(objectives) >= 2 else None
    record = {
        "benchmark": "pareto", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "config": {"methods": [m for m in args.methods.split(",") if m], "grid": args.grid, "steps": args.steps,
                   "seed": SEED, "data": data["source"], "objectives": objectives, "common_overrides": common,
                   "method_table": {name: {"objective": m.objective, "user_weights": m.overrides is not None}
                                    for name, m in METHODS.items()},
                   "axes": "held-out implicit-reward accuracy per objective (ties of that objective excluded)",
                   "hypervolume_reference_point": list(reference), "hypervolume_dimensions": len(objectives),
                   "work_dir": str(work)},
        "runs": runs, "fronts": by_method, "verdicts": verdicts(by_method, trained, objectives),
        "png": str(png) if png else None,
        "environment": environment(),
    }
    path = out / f"pareto-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({m: {k: e[k] for k in ("hypervolume", "front")} for m, e in by_method.items()}, indent=2))
    print(json.dumps(record["verdicts"], indent=2))
    print(f"wrote {path}" + (f" and {png}" if png else ""), file=sys.stderr)
    return 0 if len(trained) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
