"""`alignray submit` / `alignray job` against a real Ray head with token auth on (see conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


def _job_id(result) -> str:
    """The submission id is the first stdout line (logs follow it with --wait)."""
    return result.stdout.strip().splitlines()[0]


def test_submit_wait_succeeds_and_logs_are_readable(ray_head, cli, tmp_path: Path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.txt").write_text("uploaded-working-dir-ok\n")
    for never_shipped in ("docker/secrets/ray_auth_token", "runs/old/big.bin", ".venv/bin/python"):
        (code / never_shipped).parent.mkdir(parents=True, exist_ok=True)
        (code / never_shipped).write_text("must not be uploaded")
    check_excluded = "test ! -e docker/secrets/ray_auth_token && test ! -e runs/old && test ! -e .venv"
    started = time.monotonic()
    result = cli(["submit", "--address", ray_head.url, "--wait", "--working-dir", str(code),
                  "--entrypoint", f"cat probe.txt && {check_excluded} && echo job-finished"], env=ray_head.env)
    elapsed = time.monotonic() - started
    print(f"\n[timing] trivial job submit-to-SUCCEEDED (CLI, incl. interpreter start) {elapsed:.1f}s")
    assert result.returncode == 0, result.stderr
    job_id = _job_id(result)
    assert job_id.startswith("raysubmit_")
    assert "uploaded-working-dir-ok" in result.stdout and "job-finished" in result.stdout  # streamed
    assert f"job {job_id} SUCCEEDED" in result.stderr

    status = cli(["job", "status", job_id, "--address", ray_head.url], env=ray_head.env)
    assert status.returncode == 0 and status.stdout.startswith("SUCCEEDED"), status.stderr
    logs = cli(["job", "logs", job_id, "--address", ray_head.url], env=ray_head.env)
    assert "uploaded-working-dir-ok" in logs.stdout
    listing = cli(["job", "list"], env={**ray_head.env, "RAY_ADDRESS": ray_head.url})  # address from env
    assert any(line.startswith(f"{job_id}\tSUCCEEDED") for line in listing.stdout.splitlines())


def test_default_working_dir_ships_this_checkout(ray_head, cli):
    """Without --working-dir the job imports alignray from an uploaded copy of the repo, not from /work/main."""
    probe = "import launch.cli, pathlib; print('LAUNCH_AT', pathlib.Path(launch.cli.__file__).resolve())"
    result = cli(["submit", "--address", ray_head.url, "--wait", "--job-id", "default-wd-probe",
                  "--entrypoint", f'python -c "{probe}"'], env=ray_head.env)
    assert result.returncode == 0, result.stderr
    assert _job_id(result) == "default-wd-probe"
    # Ray echoes the entrypoint itself into the log; the probe's own output is the line starting with the tag.
    location = next(line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("LAUNCH_AT "))
    assert str(ray_head.ray_tmp) in location and "runtime_resources" in location, location
    assert not location.startswith(str(REPO_ROOT) + "/launch")


def test_failed_job_exits_nonzero(ray_head, cli):
    result = cli(["submit", "--address", ray_head.url, "--wait", "--no-working-dir",
                  "--entrypoint", "python -c 'raise SystemExit(3)'"], env=ray_head.env)
    assert result.returncode == 1
    assert "FAILED" in result.stderr


def test_stop_a_running_job(ray_head, cli):
    submitted = cli(["submit", "--address", ray_head.url, "--no-working-dir",
                     "--entrypoint", "python -c 'import time; print(\"sleeping\", flush=True); time.sleep(600)'"],
                    env=ray_head.env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = _job_id(submitted)
    deadline = time.monotonic() + 120
    state = ""
    while time.monotonic() < deadline and not state.startswith("RUNNING"):
        state = cli(["job", "status", job_id, "--address", ray_head.url], env=ray_head.env).stdout.strip()
        time.sleep(0.5)
    assert state.startswith("RUNNING")
    # A follower attached before the stop sees the job's output, then the stop, and exits non-zero.
    follower = subprocess.Popen([sys.executable, "-m", "launch.cli", "job", "logs", "--follow", job_id,
                                 "--address", ray_head.url], env=ray_head.env, cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stopped = cli(["job", "stop", job_id, "--wait", "--address", ray_head.url], env=ray_head.env, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip().splitlines() == ["stop requested", "STOPPED"]
        status = cli(["job", "status", job_id, "--address", ray_head.url], env=ray_head.env)
        assert status.stdout.startswith("STOPPED")
        out, err = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert follower.returncode == 1 and "sleeping" in out and f"job {job_id} STOPPED" in err, (out, err)


def _without_token(env: dict, home: Path) -> dict:
    client = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH_")}
    client["HOME"] = str(home)  # an empty home: no ~/.ray/auth_token to fall back on
    return client


def test_missing_token_is_a_clear_error(ray_head, cli, tmp_path: Path):
    result = cli(["job", "list", "--address", ray_head.url], env=_without_token(ray_head.env, tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"alignray job: error: {ray_head.url} requires an auth token and none was "
                                      "found (set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or write ~/.ray/auth_token)")


def test_wrong_token_is_a_clear_error(ray_head, cli, tmp_path: Path):
    env = {**_without_token(ray_head.env, tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    result = cli(["submit", "--address", ray_head.url, "--entrypoint", "true"], env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == f"alignray submit: error: {ray_head.url} rejected the auth token from RAY_AUTH_TOKEN"


def test_token_from_default_home_file(ray_head, cli, tmp_path: Path):
    """A user who copied the token to ~/.ray/auth_token needs no env var at all."""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(ray_head.token)
    result = cli(["job", "list", "--address", ray_head.url], env=_without_token(ray_head.env, tmp_path))
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not (REPO_ROOT / "launch" / "train.py").is_file(),
                    reason="launch/train.py (the `alignray train` Hydra app) does not exist yet")
def test_tiny_training_job_succeeds(ray_head, cli, tmp_path: Path):
    output_dir = tmp_path / "run"
    started = time.monotonic()
    result = cli(["submit", "--address", ray_head.url, "--wait", "--env", "OMP_NUM_THREADS=1", "--",
                  "cluster.num_workers=1", "train.max_steps=2", f"output_dir={output_dir}"],
                 env=ray_head.env, timeout=600)
    elapsed = time.monotonic() - started
    print(f"\n[timing] tiny training job submit-to-SUCCEEDED {elapsed:.1f}s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert output_dir.is_dir() and any(output_dir.iterdir()), "the job wrote nothing to the shared output dir"


def test_job_on_a_python_without_alignray_says_how_to_fix(ray_head, cli, tmp_path: Path):
    """A head started from a Python without alignray's dependencies runs jobs with that Python. The job's PATH
    here puts the system python3 (no hydra, no ray) first as `python`, so the real train entrypoint
    (`python -m launch.cli train`) fails the same way: ModuleNotFoundError for hydra in the job's driver."""
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import hydra"], capture_output=True).returncode == 0:
        pytest.skip("no system python3 without hydra on this machine")
    bare_bin = tmp_path / "bare-bin"
    bare_bin.mkdir()
    (bare_bin / "python").symlink_to(bare)
    result = cli(["submit", "--address", ray_head.url, "--wait", "--env", f"PATH={bare_bin}:{ray_head.env['PATH']}",
                  "--", "train.max_steps=1", f"output_dir={tmp_path / 'run'}"], env=ray_head.env, timeout=300)
    job_id = _job_id(result)
    assert result.returncode == 1, result.stderr
    assert "No module named 'hydra'" in result.stdout  # the streamed job log shows the real failure
    expected = ("the job's Python cannot import 'hydra' (needed by alignray): jobs run with the Python the Ray head "
                "was started from — start the head (`ray start --head`) from the alignray environment, or run the "
                "cluster from the alignray image (docker/)")
    assert result.stderr.strip().splitlines()[-1] == f"alignray: job {job_id} FAILED: {expected}"
    status = cli(["job", "status", job_id, "--address", ray_head.url], env=ray_head.env)
    assert status.stdout.strip() == f"FAILED: {expected}", status.stdout
