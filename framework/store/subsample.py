"""Subsampling a store: ISA (information-theoretic selection, arXiv 2411.10545, OBJECTIVES.md §8.2) or random.

`isa_scores(embeddings)` fits a density model to row embeddings and scores each row by how much the dataset's
entropy drops when the row is removed; `select_rows` keeps the top `fraction`; `write_subsample` writes a new
store version holding the chosen rows (in their original order) with `subsample_score` and `subsample_row`
(the row's index in the parent version). Everything is a pure function of the embeddings and the seed.

Choices the paper's public material does not confirm (OBJECTIVES.md §9.9), stated here:
* Row embedding (framework/cluster/store_passes.py `row_embeddings`): e_k = the model's last hidden states
  mean-pooled over prompt + response k; a row is [mean_k e_k, e_first − e_last] (content and preference
  direction; the second half is 0 for a single response).
* Density: a 2-component Gaussian mixture with diagonal covariances, fitted by EM in float64 on the rows
  standardised and projected on their top `max_dims` principal components (a full covariance in the raw
  hidden size would be singular for small stores).
* Information: with the plug-in entropy H = −(1/N) Σ log p(x_i) and the density held fixed, removing row j
  changes H by (−log p(x_j) − H)/(N − 1); that change is the score, so the rows kept are the least typical
  under the mixture. The density is not refitted per removal (N refits would cost N EM runs).
* Ties (identical embeddings) are broken by row index, so the selection is deterministic.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np
import pyarrow as pa

from framework.store.errors import StoreError

METHODS = ("isa", "random")


def _project(embeddings: np.ndarray, max_dims: int) -> np.ndarray:
    """Standardised rows on their top principal components (signs fixed, so the result is deterministic)."""
    x = embeddings.astype(np.float64)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:max_dims]
    vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(1)] < 0, -1.0, 1.0)[:, None]
    return x @ vt.T


def _log_components(x: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """[N, C] log(weight_c · N(x | mean_c, diag variance_c))."""
    diff = x[:, None, :] - means[None]
    log_det = np.log(variances).sum(1)
    quad = (diff ** 2 / variances[None]).sum(2)
    return np.log(weights)[None] - 0.5 * (quad + log_det[None] + x.shape[1] * math.log(2 * math.pi))


def _kmeans_pp(x: np.ndarray, components: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ starting means: each next one drawn with probability ∝ squared distance to the chosen ones."""
    means = [x[rng.integers(len(x))]]
    for _ in range(components - 1):
        distance = np.min([((x - m) ** 2).sum(1) for m in means], axis=0)
        total = distance.sum()
        means.append(x[rng.choice(len(x), p=distance / total)] if total > 0 else x[rng.integers(len(x))])
    return np.stack(means)


def _em(x: np.ndarray, means: np.ndarray, iterations: int, tol: float) -> Tuple[float, tuple]:
    """(mean log-likelihood, (weights, means, variances)) after EM from the given means."""
    n, components = len(x), len(means)
    floor = 1e-6 * max(float(x.var()), 1e-12)
    variances = np.tile(x.var(0) + floor, (components, 1))
    weights = np.full(components, 1.0 / components)
    previous = -np.inf
    for _ in range(iterations):
        log_joint = _log_components(x, weights, means, variances)
        log_total = np.logaddexp.reduce(log_joint, axis=1)
        resp = np.exp(log_joint - log_total[:, None])
        mass = resp.sum(0) + 1e-12
        weights = mass / n
        means = (resp.T @ x) / mass[:, None]
        variances = np.maximum((resp.T @ x ** 2) / mass[:, None] - means ** 2, 0.0) + floor
        if log_total.mean() - previous < tol:
            break
        previous = log_total.mean()
    log_likelihood = float(np.logaddexp.reduce(_log_components(x, weights, means, variances), axis=1).mean())
    return log_likelihood, (weights, means, variances)


def fit_gmm(x: np.ndarray, components: int = 2, seed: int = 0, restarts: int = 4, iterations: int = 200,
            tol: float = 1e-8) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights [C], means [C, D], variances [C, D]) of a diagonal Gaussian mixture: the most likely of
    `restarts` EM runs from k-means++ starts drawn with `seed` (one start can merge two clusters)."""
    rng = np.random.default_rng(seed)
    components = max(1, min(components, len(x)))
    fits = [_em(x, _kmeans_pp(x, components, rng), iterations, tol) for _ in range(restarts)]
    return max(fits, key=lambda fit: fit[0])[1]


def isa_scores(embeddings: np.ndarray, *, components: int = 2, max_dims: int = 16, seed: int = 0) -> Tuple[np.ndarray, Dict[str, Any]]:
    """(per-row entropy change on removal [N], a summary of the fitted density for the manifest)."""
    if len(embeddings) < 2:
        raise StoreError(f"ISA needs at least 2 rows, got {len(embeddings)}")
    x = _project(embeddings, max_dims)
    weights, means, variances = fit_gmm(x, components, seed)
    log_density = np.logaddexp.reduce(_log_components(x, weights, means, variances), axis=1)
    entropy = float(-log_density.mean())
    scores = (-log_density - entropy) / (len(x) - 1)
    return scores, {"components": len(weights), "dims": int(x.shape[1]), "weights": np.round(weights, 4).tolist(),
                    "entropy_nats": round(entropy, 6)}


def check_fraction(fraction: float) -> None:
    """The share of rows kept must be in (0, 1]."""
    if not 0 < fraction <= 1:
        raise StoreError(f"--fraction must be in (0, 1], got {fraction}", "e.g. --fraction 0.1")


def select_rows(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ceil(fraction · N) highest scores, in row order (ties go to the lower index)."""
    check_fraction(fraction)
    keep = max(1, math.ceil(fraction * len(scores)))
    order = np.lexsort((np.arange(len(scores)), -scores))  # by score descending, then by index
    return np.sort(order[:keep])


def random_scores(num_rows: int, seed: int) -> np.ndarray:
    """The baseline's scores: uniform draws from `seed`, so the top fraction is a uniform random subset."""
    return np.random.default_rng(seed).random(num_rows)


def write_subsample(version: Any, chosen: np.ndarray, scores: np.ndarray, info: Dict[str, Any]) -> Any:
    """Write and make current a version holding rows `chosen` of `version` (all columns, original order) plus
    `subsample_score` and `subsample_row`; its manifest's `subsample` entry is `info` plus the row counts."""
    from framework.store.build import ROWS_PER_SHARD, _split, _token_stats
    from framework.store.layout import write_version
    from framework.store.version import StoreVersion

    table = version.take(chosen.tolist())
    table = table.append_column("subsample_score", pa.array(scores[chosen], pa.float64()))
    table = table.append_column("subsample_row", pa.array(chosen, pa.int64()))
    rows = table.num_rows
    drop = ("schema_version", "alignray_version", "parent", "created", "columns", "shards", "num_rows", "version")
    manifest = {k: v for k, v in version.manifest.items() if k not in drop}
    manifest.update(
        kinds={kind: table["kind"].to_pylist().count(kind) for kind in set(table["kind"].to_pylist())},
        counts={"rows_read": rows, "rows_written": rows, "rows_rejected": 0, "rows_merged": 0, "rejects_by_reason": {}},
        token_lengths=_token_stats(table),
        subsample=dict(info, rows_in=version.num_rows, rows_out=rows, from_version=version.version,
                       parent_counts=version.manifest.get("counts", {})),
        history=version.manifest.get("history", []) + [{"note": f"subsample {info['method']} {rows}/{version.num_rows}",
                                                        "from_version": version.version}])
    shards = max(1, min(math.ceil(rows / ROWS_PER_SHARD), rows))
    path = write_version(str(version.root), _split(table, shards), manifest, parent=version.version)
    return StoreVersion(path)
