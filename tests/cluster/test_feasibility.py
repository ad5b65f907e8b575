"""Feasibility before launch: an embedded run that the machine cannot hold is refused before Ray starts, and on a
real cluster workers that cannot be placed fail after `cluster.placement_timeout_s` with what was asked and had."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from framework.cluster import feasibility
from framework.cluster.feasibility import GB, InfeasibleError, WORKER_OVERHEAD_BYTES, check_embedded
from raynodes import run_cli  # tests/cluster/raynodes.py
from tests.conftest import compose


@pytest.fixture
def two_cores_8gb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feasibility, "machine_cores", lambda: 2)
    monkeypatch.setattr(feasibility, "available_memory", lambda: 8 * GB)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _model_dir(tmp_path: Path, parameters: int) -> str:
    """A model dir whose safetensors header declares `parameters` fp32 values (the data itself is not needed)."""
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "F32", "shape": [parameters], "data_offsets": [0, 4 * parameters]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return str(tmp_path)


def test_defaults_fit_two_cores(two_cores_8gb):
    check_embedded(compose([]))  # 2 workers x 1 CPU, the demo model


def test_more_cpus_than_cores_is_refused_with_the_fix(two_cores_8gb):
    with pytest.raises(InfeasibleError) as caught:
        check_embedded(compose(["cluster.num_workers=4"]))
    message = str(caught.value)
    assert "4 workers x 1 CPU = 4 CPUs on 2 cores" in message
    assert "cluster.cpus_per_worker=0.5" in message and "cluster.allow_oversubscribe=true" in message
    check_embedded(compose(["cluster.num_workers=4", "cluster.cpus_per_worker=0.5"]))  # the first fix it names


def test_allow_oversubscribe_turns_the_refusal_into_a_warning(two_cores_8gb, caplog):
    check_embedded(compose(["cluster.num_workers=4", "cluster.allow_oversubscribe=true"]))
    assert "oversubscribed" in caplog.text and "4 CPUs on 2 cores" in caplog.text


def test_parameters_are_counted_from_safetensors_headers(tmp_path: Path):
    assert feasibility.parameter_count(_model_dir(tmp_path, 123_456_789)) == 123_456_789
    assert feasibility.parameter_count(None) == 0 and feasibility.parameter_count("org/hub-id") == 0


def test_memory_estimate_follows_the_zero_stage(tmp_path: Path, two_cores_8gb):
    params = 10**9
    path = _model_dir(tmp_path, params)
    # DPO keeps a live reference copy; ZeRO-2 splits the gradients and Adam's 8 bytes per parameter over 2 workers.
    zero2 = compose([f"model.path={path}", "deepspeed=zero2"])
    assert feasibility.worker_memory_bytes(zero2, params) == 4 * params + 2 * params + 4 * params + 4 * params \
        + WORKER_OVERHEAD_BYTES
    zero3 = compose([f"model.path={path}", "deepspeed=zero3"])
    # ZeRO-3 splits everything, the reference too: (4 + 4 + 8 + 4) / 2 bytes per parameter.
    assert feasibility.worker_memory_bytes(zero3, params) == 10 * params + WORKER_OVERHEAD_BYTES
    with pytest.raises(InfeasibleError, match=r"~27\.2 GB of memory \(2 x ~13\.6\d GB: model, ZeRO-2 state"):
        check_embedded(zero2)
    with pytest.raises(InfeasibleError, match="ZeRO-3 state.*fewer cluster.num_workers, model.dtype=bf16, or"):
        check_embedded(zero3)  # 2 x 9.9 GB still exceeds 8 GB
    check_embedded(compose([f"model.path={_model_dir(tmp_path, 10**8)}", "deepspeed=zero3"]))


def test_a_cluster_address_skips_the_local_check(two_cores_8gb):
    check_embedded(compose(["cluster.num_workers=64", "cluster.address=auto"]))


def test_cli_refuses_64_workers_at_once(tmp_path: Path):
    """The issue's case: 64 workers on a 2-core machine ran silently for 150 s; now one line, before Ray."""
    output = tmp_path / "run"
    started = time.monotonic()
    result = run_cli(["train", "cluster.num_workers=64", f"output_dir={output}"], env=None, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("alignray train: error: the run does not fit this machine: 64 workers x 1 CPU = 64 CPUs")
    assert "— use fewer cluster.num_workers, cluster.cpus_per_worker=0.5, " in lines[0]  # memory may add a fix
    assert lines[0].endswith("cluster.allow_oversubscribe=true to run anyway")
    # Refused before anything was written (Hydra's own .hydra/ and train.log aside).
    assert {p.name for p in output.iterdir()} <= {".hydra", "train.log"}
    assert seconds < 30, seconds  # interpreter + Hydra start-up; no data prep, no Ray
    print(f"\n[timing] 64-worker refusal: {seconds:.1f}s")


@pytest.mark.slow
def test_unplaceable_workers_fail_after_the_placement_timeout(ray_head, tmp_path: Path, tiny_model_dir):
    output = tmp_path / "run"
    started = time.monotonic()
    result = run_cli(["train", f"cluster.address={ray_head.gcs_address}", "cluster.num_workers=2",
                      "cluster.cpus_per_worker=3", "cluster.placement_timeout_s=5", f"model.path={tiny_model_dir}",
                      "data.demo_train_rows=16", "train.max_steps=1", f"output_dir={output}"],
                     env=ray_head.env, timeout=300)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line == ("alignray train: error: the workers could not be placed within cluster.placement_timeout_s=5: "
                    "asked 2 workers x 3 CPU, the cluster has 4 CPU (4 free) — use fewer cluster.num_workers or a "
                    "smaller cluster.cpus_per_worker, or add nodes"), result.stderr[-3000:]
    print(f"\n[timing] unplaceable run ended after {seconds:.1f}s (placement_timeout_s=5)")
