"""SIGINT / SIGTERM to a real `alignray train` (embedded Ray, 2 workers, tiny model) in its own process group.

The first signal stops the run after the current step with a committed checkpoint, prints the step and the
`resume=auto` command, and leaves no process behind; `resume=auto` continues from that checkpoint. A second signal
exits at once, also leaving nothing. "Nothing left" is checked three ways: every process that descended from the
driver while it trained (Ray's GCS, raylet, agents, dashboard, workers: the workers have their own process
groups), the driver's process group, and every process whose environment holds this run's marker.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 200


def _stat(pid: int) -> Tuple[int, int, int, str]:
    """(ppid, pgid, start time, state) of a live process; raises OSError when it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2]), int(fields[19]), fields[0]


def _processes() -> Dict[int, Tuple[int, int, int, str]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = _stat(int(entry.name))
            except OSError:
                continue
    return table


def _descendants(root: int) -> Set[Tuple[int, int]]:
    """(pid, start time) of every live process below `root`."""
    table, found, frontier = _processes(), set(), [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, started, _) in table.items():
            if ppid == parent and (pid, started) not in found:
                found.add((pid, started))
                frontier.append(pid)
    return found


def _with_marker(marker: str) -> List[int]:
    pids = []
    for pid in _processes():
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def _leftovers(tree: Set[Tuple[int, int]], pgid: int, marker: str) -> List[str]:
    alive = []
    for pid, (_, group, started, state) in _processes().items():
        if state != "Z" and ((pid, started) in tree or group == pgid):
            alive.append(f"{pid} {_cmdline(pid)[:80]!r}")
    alive += [f"{pid} (marker)" for pid in _with_marker(marker) if _processes().get(pid, ("", "", "", "Z"))[3] != "Z"]
    return alive


class Run:
    """`alignray train` started like a user's shell would: its own process group, output to files."""

    def __init__(self, output: Path, tiny: str, overrides: List[str], argv: List[str] = ()) -> None:
        self.output, self.marker = output, f"ALIGNRAY_SIGNAL_TEST_{uuid.uuid4().hex}"
        env = {**os.environ, self.marker: "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        output.parent.mkdir(parents=True, exist_ok=True)
        self.stdout, self.stderr = output.parent / f"{output.name}.out", output.parent / f"{output.name}.err"
        argv = list(argv) or ["train", "train.eval_at_start=false", "train.export=false", "data.demo_train_rows=64",
                              "train.micro_batch_size=2", "cluster.num_workers=2", f"model.path={tiny}",
                              f"output_dir={output}", *overrides]
        self.proc = subprocess.Popen([sys.executable, "-m", "launch.cli", *argv], env=env, cwd=REPO,
                                     start_new_session=True, stdout=open(self.stdout, "w"),
                                     stderr=open(self.stderr, "w"))

    def steps(self) -> List[int]:
        path = self.output / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        return [int(r["step"]) for r in rows if "lr" in r]

    def wait_steps(self, count: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len(self.steps()) < count:
            assert self.proc.poll() is None, f"exited early ({self.proc.returncode}): {self.output_text()[-3000:]}"
            assert time.monotonic() < deadline, "no training steps in time"
            time.sleep(0.2)

    def output_text(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


def _committed(output: Path) -> List[Path]:
    return sorted(p.parent for p in (output / "ray").glob("train-*/checkpoint-*/COMMITTED.json"))


def _assert_nothing_left(run: Run, tree: Set[Tuple[int, int]]) -> None:
    deadline = time.monotonic() + 10  # the kernel may still be reaping
    while (left := _leftovers(tree, run.proc.pid, run.marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


def _snapshot(run: Run) -> Set[Tuple[int, int]]:
    """The driver's process tree while it trains; it must include Ray's agents (seen to outlive SIGTERM)."""
    tree = _descendants(run.proc.pid)
    names = b" ".join(_cmdline(pid) for pid, _ in tree)
    assert b"DashboardAgent" in names and b"RuntimeEnvAgent" in names and b"RayTrainWorker" in names, names[:2000]
    return tree


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_stops_after_step_with_checkpoint_and_resume_continues(signum, tmp_path: Path, tiny_model_dir):
    run = Run(tmp_path / "run", tiny_model_dir, [f"train.max_steps={MAX_STEPS}"])
    try:
        run.wait_steps(3)
        tree = _snapshot(run)
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(run.proc.pid, signum)  # Ctrl-C: the terminal signals the whole foreground group
        else:
            os.kill(run.proc.pid, signum)  # `kill PID`, `docker stop`: the driver only
        code = run.proc.wait(timeout=180)
        stop_seconds = time.monotonic() - sent
    finally:
        run.proc.kill()
    text = run.output_text()
    assert code == 128 + signum, text[-3000:]
    reached = max(run.steps())
    assert 3 <= reached < MAX_STEPS
    assert f"interrupted by {signal.Signals(signum).name} after step {reached}: checkpoint written" in text
    # alignray's own output has no traceback; Ray's actors' log lines (prefixed "(Name pid=N)") are Ray's: under
    # heavy load its controller was seen to log an internal get() timeout with a traceback.
    assert not [line for line in text.splitlines() if "Traceback" in line and " pid=" not in line], text[-3000:]
    latest = _committed(run.output)[-1]
    assert latest.name == f"checkpoint-{reached:06d}" and f"checkpoint: {latest}" in text
    command = next(line.split("resume with: ", 1)[1] for line in text.splitlines() if "resume with: " in line)
    assert command.startswith("alignray train ") and command.endswith(f"output_dir={run.output} resume=auto")
    assert not (run.output / "STOP_REQUESTED").exists()
    _assert_nothing_left(run, tree)
    print(f"\n[timing] {signal.Signals(signum).name} -> exit {stop_seconds:.1f}s (step {reached})")
    if signum == signal.SIGINT:
        return  # one resume is enough: the checkpoint and the command are the same for both signals
    resumed = Run(run.output, tiny_model_dir, [], argv=[*shlex.split(command)[1:], f"train.max_steps={reached + 2}"])
    assert resumed.proc.wait(timeout=400) == 0, resumed.output_text()[-3000:]
    rows = [json.loads(line) for line in (run.output / "metrics.jsonl").read_text().splitlines()]
    restored = [r for r in rows if r.get("event") == "restored"]
    assert len(restored) == 1 and restored[0]["step"] == reached
    assert resumed.steps()[-2:] == [reached + 1, reached + 2]


def test_second_signal_exits_at_once(tmp_path: Path, tiny_model_dir):
    run = Run(tmp_path / "run", tiny_model_dir, [f"train.max_steps={MAX_STEPS}"])
    try:
        run.wait_steps(2)
        tree = _snapshot(run)
        os.killpg(run.proc.pid, signal.SIGINT)
        time.sleep(0.3)
        sent = time.monotonic()
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.proc.wait(timeout=60)
        exit_seconds = time.monotonic() - sent
    finally:
        run.proc.kill()
    assert code == 130, run.output_text()[-3000:]
    assert exit_seconds < 15
    _assert_nothing_left(run, tree)
    print(f"\n[timing] second SIGINT -> exit {exit_seconds:.1f}s")
