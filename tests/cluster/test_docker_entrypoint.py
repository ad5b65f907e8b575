"""docker/entrypoint.sh run outside a container: head, worker and submit roles form a real 2-node cluster.

Ray refuses to start a worker node with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the switch that pins a single node to
127.0.0.1) and rewrites 127.0.0.1 to the machine's address otherwise. The nodes therefore use other loopback
addresses (127.0.0.2 head, 127.0.0.3 worker), which Ray keeps as given: all traffic stays on loopback, though
Ray's listeners bind the wildcard address as they do in a container.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from raynodes import ProcessGroup, free_port, ray_env, wait_for_job_api, write_token  # tests/cluster/raynodes.py

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def _ports_args() -> str:
    """Free ports for every per-node listener with a fixed default (a second node on one host would collide)."""
    return " ".join(f"--{flag}={free_port()}" for flag in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port"))


def test_node_roles_refuse_to_start_without_a_token(tmp_path: Path):
    env = {k: v for k, v in ray_env(tmp_path / "unused").items() if not k.startswith("RAY_AUTH_TOKEN")}
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-such-token")
    for role in ("head", "worker", "submit"):
        result = subprocess.run(["bash", str(ENTRYPOINT), role], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (role, result.stderr)
        assert result.stderr.strip() == (
            "alignray-entrypoint: error: token auth is on but there is no token: set RAY_AUTH_TOKEN or mount a "
            f"readable token file at {tmp_path / 'no-such-token'} (see docker/README.md)")


def test_worker_role_needs_the_head_address(tmp_path: Path):
    env = ray_env(write_token(tmp_path / "token"))
    result = subprocess.run(["bash", str(ENTRYPOINT), "worker"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "RAY_HEAD_ADDRESS" in result.stderr


@pytest.mark.slow
def test_head_worker_submit_roles_form_a_cluster(tmp_path: Path, cli):
    token_path = write_token(tmp_path / "secrets" / "ray_auth_token")
    base = ray_env(token_path, loopback=False)
    ray_tmp = Path(tempfile.mkdtemp(prefix="are-", dir="/tmp"))  # short: AF_UNIX paths live under it
    gcs_port, dashboard_port = free_port(), free_port()
    url = f"http://127.0.0.1:{dashboard_port}"
    head_env = {**base, "RAY_NODE_IP_ADDRESS": HEAD_IP, "RAY_PORT": str(gcs_port), "RAY_DASHBOARD_HOST": "127.0.0.1",
                "RAY_DASHBOARD_PORT": str(dashboard_port), "RAY_NUM_CPUS": "1", "RAY_TEMP_DIR": str(ray_tmp / "head"),
                "RAY_START_ARGS": _ports_args()}
    worker_env = {**base, "RAY_HEAD_ADDRESS": f"{HEAD_IP}:{gcs_port}", "RAY_NODE_IP_ADDRESS": WORKER_IP,
                  "RAY_NUM_CPUS": "2", "RAY_TEMP_DIR": str(ray_tmp / "worker"), "RAY_START_ARGS": _ports_args()}
    groups = []
    try:
        started = time.monotonic()
        groups.append(ProcessGroup(["bash", str(ENTRYPOINT), "head"], head_env, tmp_path / "head.log"))
        wait_for_job_api(url, token_path.read_text(), group=groups[0])
        print(f"\n[timing] entrypoint head: job API ready after {time.monotonic() - started:.1f}s")
        # docker-compose.yml's healthcheck command: healthy with the token, unhealthy without it.
        health = ["ray", "health-check", "--address", f"{HEAD_IP}:{gcs_port}"]
        assert subprocess.run(health, env=base, capture_output=True, timeout=60).returncode == 0
        no_token = {k: v for k, v in base.items() if not k.startswith("RAY_AUTH_TOKEN")}
        assert subprocess.run(health, env={**no_token, "HOME": str(tmp_path)}, capture_output=True,
                              timeout=60).returncode != 0
        groups.append(ProcessGroup(["bash", str(ENTRYPOINT), "worker"], worker_env, tmp_path / "worker.log"))

        # The job waits for the worker node, then runs a task pinned to it: proof the worker joined and works.
        # Both waits are bounded so a worker that never joins fails the job instead of hanging it.
        probe = (
            "import ray, time; ray.init(); deadline = time.time() + 240\n"
            "alive = lambda: len([n for n in ray.nodes() if n['Alive']])\n"
            "while alive() < 2 and time.time() < deadline: time.sleep(0.5)\n"
            "print('ALIVE_NODES', alive(), flush=True)\n"
            "assert alive() == 2, 'the worker never joined'\n"
            f"ref = ray.remote(ray.util.get_node_ip_address).options(resources={{'node:{WORKER_IP}': 0.01}}).remote()\n"
            "ready, _ = ray.wait([ref], timeout=180)\n"
            "assert ready, 'the task pinned to the worker never ran'\n"
            "print('TASK_ON', ray.get(ref))\n"
        )
        (tmp_path / "code").mkdir()
        (tmp_path / "code" / "probe.py").write_text(probe)
        submit_env = {**base, "RAY_API_SERVER_ADDRESS": url}
        command = ["bash", str(ENTRYPOINT), "submit", "--wait", "--working-dir", str(tmp_path / "code"),
                   "--entrypoint", "python probe.py"]
        try:
            submitted = subprocess.run(command, env=submit_env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail(f"submit --wait timed out\nworker log:\n{groups[1].log_tail()}\nhead log:\n{groups[0].log_tail()}")
        nodes_log = f"\nworker log:\n{groups[1].log_tail()}"
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-2000:] + nodes_log
        assert "ALIVE_NODES 2" in submitted.stdout and f"TASK_ON {WORKER_IP}" in submitted.stdout
        job_id = submitted.stdout.splitlines()[0]
        status = cli(["job", "status", job_id, "--address", url], env=base)
        assert status.stdout.startswith("SUCCEEDED")
    finally:
        for group in reversed(groups):
            group.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not any(group.alive() for group in groups), "a node outlived its process-group teardown"
