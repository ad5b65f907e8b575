"""Helpers that run real Ray nodes for the cluster-operation tests (fixtures in conftest.py use them).

The head runs like a user's: `ray start --head --block` with token auth on, but isolated from everything else
on the machine: its own process group (ended by pgid, never `ray stop`, which would kill other people's Ray),
its own `--temp-dir`, its own token file (RAY_AUTH_TOKEN_PATH; ~/.ray is never read or written), free ports for
every listener Ray would otherwise open on a fixed default (10001, 52365...), and loopback only:
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` stops Ray from rewriting 127.0.0.1 to the machine's interface address.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (small race window; Ray fails loudly if it is taken meanwhile)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ProcessGroup:
    """A command started in its own session/process group, ended by signalling the whole group."""

    def __init__(self, argv: List[str], env: Dict[str, str], log_path: Path, cwd: Optional[Path] = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pgid = self.proc.pid  # session leader: its pid is the group id

    def alive(self) -> bool:
        """True while any process of the group still runs (zombies awaiting reaping do not count)."""
        return _group_has_live_members(self.pgid)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the group (Ray shuts its children down), then SIGKILL whatever is left after `grace_s`."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.proc.poll() is None:
                    time.sleep(0.2)
                    continue
                # The leader is reaped; other members may still be exiting (or be zombies of it).
                if not _group_has_live_members(self.pgid):
                    break
                time.sleep(0.2)
        self.proc.poll()
        self._log.close()

    def log_tail(self, chars: int = 3000) -> str:
        """End of the group's combined output, for failure messages."""
        return self.log_path.read_text(errors="replace")[-chars:]


def _group_has_live_members(pgid: int) -> bool:
    """Any non-zombie process in the group (zombies hold no ports and die with their parent)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def ray_env(token_path: Path, loopback: bool = True) -> Dict[str, str]:
    """Environment for a node or client: token auth from `token_path`, this venv's `python` first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if loopback:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def write_token(path: Path) -> Path:
    """A fresh 256-bit token, readable only by us (what `ray get-auth-token --generate` makes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def head_port_args() -> List[str]:
    """Free ports for every listener with a fixed default, so two heads on one machine never collide."""
    return [
        f"--port={free_port()}",
        f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


def wait_for_job_api(url: str, token: str, timeout_s: float = 90.0, group: Optional[ProcessGroup] = None) -> None:
    """Block until the head's job API answers an authenticated request."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if group is not None and group.proc.poll() is not None:
            raise RuntimeError(f"ray head exited early:\n{group.log_tail()}")
        try:
            reply = requests.get(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=2)
            if reply.status_code == 200:
                return
        except requests.exceptions.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"job API at {url} not ready after {timeout_s}s" +
                       (f":\n{group.log_tail()}" if group else ""))


@dataclass
class RayHead:
    """A running head: where to reach it and how to authenticate like a user would."""

    url: str  # job API / dashboard, http://127.0.0.1:PORT
    gcs_address: str  # 127.0.0.1:PORT, for `ray start --address`
    token_path: Path
    env: Dict[str, str]  # a client environment that holds the token
    group: ProcessGroup
    start_seconds: float
    tmp: Path
    ray_tmp: Path  # Ray's --temp-dir (short: AF_UNIX socket paths under it must stay < 108 bytes)

    def stop(self) -> None:
        """End the head's process group and remove its Ray temp dir."""
        self.group.stop()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()


def start_head(tmp: Path, num_cpus: int = 4) -> RayHead:
    """Start an isolated loopback head under token auth and wait until its job API answers."""
    tmp.mkdir(parents=True, exist_ok=True)
    token_path = write_token(tmp / "secrets" / "auth_token")
    env = ray_env(token_path)
    ray_tmp = Path(tempfile.mkdtemp(prefix="arh-", dir="/tmp"))
    ports = head_port_args()
    gcs_port, dashboard_port = ports[0].split("=")[1], ports[1].split("=")[1]
    argv = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}", "--include-dashboard=true",
            f"--temp-dir={ray_tmp}", *ports]
    started = time.monotonic()
    group = ProcessGroup(argv, env, tmp / "head.log", cwd=tmp)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for_job_api(url, token_path.read_text(), group=group)
    except BaseException:
        group.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        raise
    return RayHead(url=url, gcs_address=f"127.0.0.1:{gcs_port}", token_path=token_path, env=env, group=group,
                   start_seconds=time.monotonic() - started, tmp=tmp, ray_tmp=ray_tmp)


def run_cli(args: List[str], env: Dict[str, str], timeout: float = 300, cwd: Path = REPO_ROOT):
    """Run `alignray <args>` as a user would (`python -m launch.cli`), capturing output."""
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
