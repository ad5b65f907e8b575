"""Driver side: start or join Ray, run the TorchTrainer, show progress, export the result.

This is the only module (with `worker.py` and `jobs.py`) that talks to Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from framework.cluster import interrupt
from framework.config import RunConfig

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
_embedded = False  # this process started its Ray (and so must end all of it)


def _use_gpu(cfg: RunConfig) -> bool:
    if cfg.cluster.use_gpu == "auto":
        import torch

        return torch.cuda.is_available()
    return cfg.cluster.use_gpu == "true"


def embedded_cpus(cfg: RunConfig) -> int:
    """Logical CPUs for an embedded Ray: more than the training workers take, so Ray Data and the Train
    controller always find a slot (2 one-CPU workers on num_cpus=2 starve a Ray Data read forever)."""
    need = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker
    return int(cfg.cluster.num_cpus or max(4, int(need) + 2))


def ensure_ray(cfg: RunConfig) -> None:
    """Join `cluster.address` (or RAY_ADDRESS), else start an embedded Ray bound to loopback."""
    ensure_ray_address(cfg.cluster.address, embedded_cpus(cfg), threads=max(1, int(cfg.cluster.cpus_per_worker)))


def ensure_ray_address(address: Optional[str], num_cpus: int, threads: int = 1) -> None:
    """Connect to `address` (or RAY_ADDRESS); without one, start an embedded Ray with `num_cpus` logical CPUs."""
    import ray

    if ray.is_initialized():
        return
    env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONUNBUFFERED": "1"}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Inside a submitted job the job's runtime env already sets some of these; Ray refuses a conflicting
        # value, so only add what the job left unset.
        env = {k: v for k, v in env.items() if k not in os.environ}
        with _keep_sigterm_handler():
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        return
    # Seen on these machines: Ray binds the machine's interface unless told otherwise; keep it on loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The dashboard backs Ray's state API, which Ray Train's placement-group cleaner polls. Name its URL for
    # Ray's own actors: with another Ray instance on the machine, "auto" discovery is ambiguous and fails.
    port = _free_port()
    env["RAY_API_SERVER_ADDRESS"] = f"http://{LOOPBACK}:{port}"
    with _keep_sigterm_handler():
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK, dashboard_port=port,
                 _node_ip_address=LOOPBACK, runtime_env={"env_vars": env}, log_to_driver=True, configure_logging=True,
                 logging_level=logging.WARNING)
    global _embedded
    _embedded = True


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """ray.init installs a SIGTERM handler that exits at once; keep the one `alignray train` installed (it stops
    the run after the current step). Without one, Ray's stays: an embedded Ray's handler ends its processes."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Progress:
    """A tqdm bar on the driver fed by rank 0's metrics file (worker stderr is line-buffered through Ray, so a
    bar drawn there would print one line per refresh)."""

    def __init__(self, metrics_file: Path, total: int) -> None:
        self.metrics_file, self.total = metrics_file, total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.last: Dict[str, Any] = {}

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.total, desc="train", unit="step", dynamic_ncols=True)
        offset = 0
        while True:
            stopping = self._stop.is_set()
            if self.metrics_file.exists():
                with open(self.metrics_file) as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith("\n"):
                            break
                        offset += len(line.encode())
                        self._update(bar, json.loads(line))
            if stopping:
                break
            time.sleep(0.5)
        bar.close()

    def _update(self, bar: Any, metrics: Dict[str, Any]) -> None:
        self.last = metrics
        step = int(metrics.get("step", 0))
        if step > bar.n:
            bar.update(step - bar.n)
        shown = {k: metrics[k] for k in ("loss", "rewards/accuracy", "rewards/margin") if k in metrics}
        if "tokens_per_s" in metrics:
            shown["tok/s"] = int(metrics["tokens_per_s"])
        bar.set_postfix({k.split("/")[-1]: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()})


def fit(cfg: RunConfig, prepared: Any) -> Any:
    """Run the TorchTrainer to completion; returns Ray's Result (its checkpoint is the final one).

    Every fit is a new Ray Train run (`<storage>/train-<time>`): Ray reloads a run's own checkpoint list when a
    run name is reused, which would make a fresh start silently continue an old run. Resuming is explicit:
    `resume=auto|PATH` picks a committed checkpoint and the workers restore it (see `checkpoints.py`)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from framework.cluster.worker import METRICS_FILE, train_worker

    # Ray Train's own knob for how long the controller waits for the workers' placement group; it propagates
    # this variable from the driver to its controller.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(cfg.cluster.placement_timeout_s)
    ensure_ray(cfg)
    use_gpu = _use_gpu(cfg)
    backend = cfg.cluster.backend if cfg.cluster.backend != "auto" else ("nccl" if use_gpu else "gloo")
    output = Path(cfg.output_dir).resolve()
    storage = storage_path(cfg)
    payload = {"config": dataclasses.replace(cfg, output_dir=str(output)).to_dict(),
               "paths": dataclasses.asdict(prepared), "use_gpu": use_gpu, "backend": backend,
               "resume_from": resume_checkpoint(cfg),
               # Fault-injection hooks for tests (documented in docs/fault-tolerance.md) reach the workers here.
               "env": {k: v for k, v in os.environ.items() if k.startswith("ALIGNRAY_TEST_")}}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=payload,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.cluster.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cluster.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}",
            storage_path=storage,
            # A placement timeout is a controller failure, retried without limit by default: count it like a worker
            # failure so that an unplaceable run ends after placement_timeout_s x (max_failures + 1).
            failure_config=ray.train.FailureConfig(max_failures=cfg.cluster.max_failures,
                                                   controller_failure_limit=cfg.cluster.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    metrics_file = output / METRICS_FILE
    interrupt.arm(output)
    try:
        with Progress(metrics_file, cfg.train.max_steps):
            return _fit_off_main_thread(trainer)
    except Exception as error:
        raise _placement_error(error, cfg) or error
    finally:
        interrupt.disarm()


def _fit_off_main_thread(trainer: Any) -> Any:
    """`trainer.fit()` in a thread: on the main thread Ray Train replaces the SIGINT handler with its own abort
    (no checkpoint), and a main thread blocked in `ray.get` would run alignray's handlers late."""
    outcome: Dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="alignray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _placement_error(error: BaseException, cfg: RunConfig) -> Optional[Exception]:
    """A one-line error when the workers could not be placed: what was asked and what the cluster has."""
    import ray
    from ray.train.v2._internal.exceptions import InsufficientClusterResourcesError, WorkerGroupStartupTimeoutError

    failure = getattr(error, "controller_failure", None)
    if not isinstance(failure, (WorkerGroupStartupTimeoutError, InsufficientClusterResourcesError)):
        return None
    from framework.cluster.feasibility import InfeasibleError

    total, free = ray.cluster_resources(), ray.available_resources()
    asked = f"{cfg.cluster.num_workers} workers x {cfg.cluster.cpus_per_worker:g} CPU" + (
        " + 1 GPU" if _use_gpu(cfg) else "")
    has = f"{total.get('CPU', 0):g} CPU ({free.get('CPU', 0):g} free)" + (
        f", {total['GPU']:g} GPU ({free.get('GPU', 0):g} free)" if "GPU" in total else "")
    return InfeasibleError(f"the workers could not be placed within cluster.placement_timeout_s="
                           f"{cfg.cluster.placement_timeout_s:g}: asked {asked}, the cluster has {has}",
                           "use fewer cluster.num_workers or a smaller cluster.cpus_per_worker, or add nodes")


def storage_path(cfg: RunConfig) -> str:
    """Where Ray Train keeps this run's checkpoints: `cluster.storage_path` or `<output_dir>/ray`."""
    return cfg.cluster.storage_path or str(Path(cfg.output_dir).resolve() / "ray")


def resume_checkpoint(cfg: RunConfig) -> Optional[str]:
    """The committed checkpoint `resume=auto|PATH` names, or None for a fresh start."""
    from framework.cluster.checkpoints import latest_checkpoint, require_committed

    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        path = latest_checkpoint(storage_path(cfg))
        if path is None:
            log.warning("resume=auto: no committed checkpoint under %s; starting fresh", storage_path(cfg))
            return None
    else:
        path = require_committed(cfg.resume if "://" in cfg.resume else str(Path(cfg.resume).resolve()))
    log.warning("resuming from %s", path)
    return path


def shutdown() -> None:
    """Disconnect from Ray; an embedded Ray is ended completely, leftovers included (its DashboardAgent and
    RuntimeEnvAgent were seen to outlive ray.shutdown() after a SIGTERM)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    ours = interrupt.descendants() if _embedded else []
    ray.shutdown()
    interrupt.end_processes(ours, grace_s=3)
