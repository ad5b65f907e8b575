"""Driver side of a graceful stop: the stop-request file the workers poll, and ending an embedded Ray's processes.

SIGINT/SIGTERM on the driver → `request_stop` writes `<output_dir>/STOP_REQUESTED` (the output dir is shared with
the workers: they write metrics there) → rank 0 sees it after its current step, all ranks agree through one
all-reduce, checkpoint and return (`framework/engine/loop.py`). No Ray import here.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

from framework.cluster.reporter import STOP_FILE

_stop_file: Optional[Path] = None
_signal: Optional[int] = None


def arm(output_dir: Path) -> None:
    """A run is starting: stop requests now go to its workers. A stale request of an earlier run is removed,
    or `resume=auto` after an interrupt would stop again at once."""
    global _stop_file, _signal
    _stop_file, _signal = Path(output_dir) / STOP_FILE, None
    _stop_file.unlink(missing_ok=True)


def disarm() -> None:
    """The run is over: remove its stop request (the interrupt is recorded in `requested_signal`)."""
    global _stop_file
    if _stop_file is not None:
        _stop_file.unlink(missing_ok=True)
    _stop_file = None


def request_stop(signum: int) -> bool:
    """Ask the running workers to stop after their current step; False when no run is under way."""
    global _signal
    if _stop_file is None:
        return False
    _signal = signum
    _stop_file.write_text(f"{signal.Signals(signum).name} {time.time()}\n")
    return True


def requested_signal() -> Optional[int]:
    """The signal that asked the last run to stop, if any."""
    return _signal


def descendants() -> List[int]:
    """Pids of every process below this one (an embedded Ray's GCS, raylet, agents, dashboard, workers)."""
    import psutil

    return [child.pid for child in psutil.Process().children(recursive=True)]


def end_processes(pids: List[int], grace_s: float) -> None:
    """SIGTERM `pids`, wait up to `grace_s` for them to exit, SIGKILL the rest (Ray's DashboardAgent and
    RuntimeEnvAgent were seen to ignore SIGTERM). With `grace_s=0`, SIGKILL at once and do not wait."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    for sig in ((signal.SIGTERM,) if grace_s > 0 else ()) + (signal.SIGKILL,):
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 0)
        while (procs := [proc for proc in procs if _running(proc)]) and time.monotonic() < deadline:
            time.sleep(0.1)


def _running(proc: "psutil.Process") -> bool:  # noqa: F821 - psutil is imported lazily
    """Alive and not a zombie (an orphaned zombie waits for a reaper that a container may not have)."""
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exit_now(signum: int) -> None:
    """A second signal: kill everything this driver started and exit without cleanup handlers."""
    end_processes(descendants(), grace_s=0)
    os._exit(128 + signum)


def install_handlers(command: str) -> None:
    """SIGINT and SIGTERM alike: the first stops the run after its current step (with no run under way yet, it
    exits like Ctrl-C through the normal cleanup); a second one exits at once, killing what this driver started."""
    seen = []

    def handle(signum: int, frame: object) -> None:
        seen.append(signum)
        if len(seen) > 1:
            exit_now(signum)
        if request_stop(signum):
            print(f"\n{command}: {signal.Signals(signum).name}: stopping after the current step "
                  "(send it again to exit at once)", file=sys.stderr, flush=True)
            return
        print(f"\n{command}: {signal.Signals(signum).name}: stopping at once (no training under way)",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handle)
    # Forked children (the store build's tokenizer pool) get the old handlers back: Pool.terminate()'s SIGTERM
    # must end them, and a Python-level handler can miss a signal that lands while they block on a semaphore.
    os.register_at_fork(after_in_child=lambda: [signal.signal(sig, old) for sig, old in previous.items()])
