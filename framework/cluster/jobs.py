"""Glue between alignray and Ray's Jobs API (`JobSubmissionClient`).

Three concerns live here and nowhere else:

* **Address**: the `--address` flag, else `RAY_API_SERVER_ADDRESS`, else `RAY_ADDRESS` (the order Ray's own
  `ray job` CLI uses), normally the dashboard URL `http://head:8265`.
* **Auth token**: Ray 2.60 clusters require a bearer token by default. We resolve it ourselves, in the same
  order as Ray's C++ loader (`RAY_AUTH_TOKEN`, then the file at `RAY_AUTH_TOKEN_PATH`, then
  `~/.ray/auth_token`) and send it as an explicit `Authorization` header. Doing it in Python instead of relying
  on `RAY_AUTH_MODE=token` being exported lets us name the exact source in error messages and fail before any
  request when a configured token file is missing. `RAY_AUTH_MODE=disabled` sends no token.
* **Runtime env**: the job carries the project's code and config as `working_dir` (the repo root by default).
  Dependencies come from the cluster image, which has alignray and its pinned stack installed (docker/);
  the uploaded tree shadows the installed package, so code edits ship without an image rebuild, while a
  dependency change needs a new image. Stores and outputs are never uploaded: they must sit on storage the
  cluster sees and are passed as train overrides (`output_dir=/shared/run1`).

Every failure a user can cause (no token, wrong token, unreachable head, unknown job) surfaces as `JobsError`
with a one-line message; the CLI prints it without a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional, Sequence

from framework.errors import UserError

if TYPE_CHECKING:  # ray is heavy; import it only where it is used.
    from ray.job_submission import JobSubmissionClient

# Paths (gitignore syntax, relative to working_dir) never uploaded with a job: environments, run outputs and
# VCS data are large and machine-specific; benchmark results are reports, not code; docker/secrets holds the
# cluster token for compose and must never travel inside a job package.
DEFAULT_EXCLUDES: List[str] = [
    ".venv",
    ".git",
    "docker/secrets/",
    "runs/",
    "outputs/",
    "multirun/",
    "benchmarks/results/",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    "*.egg-info/",
]

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
# Import names of alignray and its install_requires (setup.cfg). A job runs the head's Python: when that Python
# lacks one of these, the head was started outside the alignray environment.
ALIGNRAY_IMPORTS = ("framework", "launch", "conf", "hydra", "omegaconf", "torch", "deepspeed", "transformers",
                    "tokenizers", "accelerate", "safetensors", "pyarrow", "tqdm", "matplotlib", "tensorboard",
                    "zstandard", "yaml", "numpy")
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
_TOKEN_HINT = "set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or write ~/.ray/auth_token"


class JobsError(UserError, RuntimeError):
    """A user-facing failure of a jobs operation; `str()` is one line, fit to print without a traceback."""


@dataclass(frozen=True)
class AuthToken:
    """A resolved cluster token and where it came from (for error messages, never printed itself)."""

    value: str
    source: str


def resolve_auth_token(env: Optional[Mapping[str, str]] = None, home: Optional[Path] = None) -> Optional[AuthToken]:
    """Find the token like Ray does: `RAY_AUTH_TOKEN`, then `RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`.

    Returns None when auth is disabled (`RAY_AUTH_MODE=disabled`) or no source is configured. A set but
    unreadable/empty `RAY_AUTH_TOKEN_PATH` is an error rather than a silent fall-through, as in Ray.
    """
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return AuthToken(env["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    if env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        token = _read_token_file(path)
        if token is None:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path} is missing, unreadable or empty")
        return AuthToken(token, f"RAY_AUTH_TOKEN_PATH={path}")
    default = (home if home is not None else Path.home()) / ".ray" / "auth_token"
    token = _read_token_file(default)
    return None if token is None else AuthToken(token, str(default))


def _read_token_file(path: Path) -> Optional[str]:
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def resolve_address(address: Optional[str], env: Optional[Mapping[str, str]] = None) -> str:
    """The job API address: the flag, else `RAY_API_SERVER_ADDRESS`, else `RAY_ADDRESS`."""
    env = os.environ if env is None else env
    resolved = address or env.get("RAY_API_SERVER_ADDRESS") or env.get("RAY_ADDRESS")
    if not resolved:
        raise JobsError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return resolved.rstrip("/")


def diagnose_failure(text: str) -> Optional[str]:
    """One line naming the cause and fix when a failed job's message or logs show that its Python could not
    import alignray or one of its dependencies; None for any other failure."""
    match = _MISSING_MODULE.search(text)
    if match is None or match.group(1).split(".")[0] not in ALIGNRAY_IMPORTS:
        return None
    return (f"the job's Python cannot import {match.group(1)!r} (needed by alignray): jobs run with the Python the "
            "Ray head was started from — start the head (`ray start --head`) from the alignray environment, or "
            "run the cluster from the alignray image (docker/)")


class _ErrorTranslator:
    """Context manager turning Ray/requests exceptions into one-line `JobsError`s."""

    def __init__(self, address: str, token: Optional[AuthToken]):
        self.address = address
        self.token = token

    def __enter__(self) -> "_ErrorTranslator":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # Only ordinary errors: GeneratorExit/KeyboardInterrupt must pass through untouched.
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, JobsError):
            return False
        raise self.translate(exc) from None

    def translate(self, exc: BaseException) -> JobsError:
        """Map one exception to the message a user can act on."""
        import aiohttp
        import requests
        from ray.exceptions import AuthenticationError

        if isinstance(exc, AuthenticationError):
            if self.token is None:
                return JobsError(f"{self.address} requires an auth token and none was found ({_TOKEN_HINT})")
            return JobsError(f"{self.address} rejected the auth token from {self.token.source}")
        unreachable = (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                       aiohttp.ClientConnectionError)
        if isinstance(exc, unreachable):
            return JobsError(f"cannot reach the Ray job API at {self.address} ({type(exc).__name__})")
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return JobsError(first_line)


class JobsSession:
    """An authenticated `JobSubmissionClient` plus the error translation every call goes through."""

    def __init__(self, address: Optional[str] = None, env: Optional[Mapping[str, str]] = None):
        env = os.environ if env is None else env
        self.address = resolve_address(address, env)
        self.token = resolve_auth_token(env)
        if self.token is None and env.get("RAY_AUTH_MODE", "").lower() == "token":
            # Fail before any request: Ray's own client would only log a warning and then get a 401.
            raise JobsError(f"RAY_AUTH_MODE=token but no auth token was found ({_TOKEN_HINT})")
        headers = {"Authorization": f"Bearer {self.token.value}"} if self.token else None
        with self.errors():
            from ray.job_submission import JobSubmissionClient

            # The constructor already calls /api/version, so a bad token or address fails here.
            self.client: "JobSubmissionClient" = JobSubmissionClient(self.address, headers=headers)

    def errors(self) -> _ErrorTranslator:
        """`with session.errors(): ...` turns any failure into a `JobsError`."""
        return _ErrorTranslator(self.address, self.token)

    def submit(self, entrypoint: str, runtime_env: Optional[dict] = None, job_id: Optional[str] = None) -> str:
        """Submit a shell command; returns the submission id."""
        with self.errors():
            return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id)

    def status(self, job_id: str) -> str:
        """The job's state name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        with self.errors():
            return str(self.client.get_job_status(job_id).value)

    def info(self, job_id: str):
        """Full `JobDetails` (status, message, entrypoint, times)."""
        with self.errors():
            return self.client.get_job_info(job_id)

    def diagnosis(self, job_id: str, message: Optional[str]) -> Optional[str]:
        """For a failed job: a known cause with its fix in one line (see `diagnose_failure`) from Ray's message,
        else from the job's logs; None when the cause is not one we recognise."""
        return diagnose_failure(message or "") or diagnose_failure(self.logs(job_id)[-20000:])

    def logs(self, job_id: str) -> str:
        """Everything the job's driver has printed so far."""
        with self.errors():
            return self.client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the cluster to stop the job; False if it had already finished."""
        with self.errors():
            return bool(self.client.stop_job(job_id))

    def list(self) -> list:
        """All jobs the cluster knows, oldest first."""
        with self.errors():
            jobs = self.client.list_jobs()
        return sorted(jobs, key=lambda job: job.start_time or 0)

    def tail(self, job_id: str) -> Iterator[str]:
        """Yield log chunks as the driver writes them, until the job ends (Ray's websocket tail)."""
        import asyncio

        loop = asyncio.new_event_loop()
        stream = self.client.tail_job_logs(job_id)
        try:
            with self.errors():
                while True:
                    try:
                        yield loop.run_until_complete(stream.__anext__())
                    except StopAsyncIteration:
                        return
        finally:
            loop.run_until_complete(stream.aclose())
            loop.close()

    def wait(self, job_id: str, timeout_s: Optional[float] = None, poll_s: float = 0.5) -> str:
        """Poll until the job reaches a terminal state; returns it. Raises `JobsError` on timeout."""
        import time

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            state = self.status(job_id)
            if state in TERMINAL_STATES:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise JobsError(f"job {job_id} still {state} after {timeout_s:.0f}s")
            time.sleep(poll_s)


def project_root() -> Optional[Path]:
    """The source checkout alignray runs from, or None when it is an installed (non-editable) package."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.cfg").is_file() and (root / "launch").is_dir() else None


def build_runtime_env(
    working_dir: Optional[Path],
    env_vars: Optional[Dict[str, str]] = None,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
) -> dict:
    """The job's runtime env: project tree as `working_dir` (unless None: use the image's install) + env vars."""
    runtime_env: dict = {}
    if working_dir is not None:
        if not Path(working_dir).is_dir():
            raise JobsError(f"--working-dir {working_dir} is not a directory")
        runtime_env["working_dir"] = str(working_dir)
        runtime_env["excludes"] = list(excludes)
    # The train driver calls ray.init(runtime_env={"env_vars": ...}) for its workers; Ray refuses to merge that
    # with the job's env when a key appears in both (e.g. --env OMP_NUM_THREADS=1) unless told to combine them.
    # With this flag the driver's value wins for such a key and everything else (working_dir too) is kept.
    runtime_env["env_vars"] = {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1", **(env_vars or {})}
    return runtime_env


def train_entrypoint(overrides: Sequence[str]) -> str:
    """The shell command a job runs: `python -m launch.cli train <overrides>`.

    `python -m` (not the `alignray` script) resolves `launch` from the job's working_dir first, so the uploaded
    code wins over the image's install; each override is shell-quoted because Ray runs the string in a shell.
    """
    return shlex.join(["python", "-m", "launch.cli", "train", *overrides])


def relative_output_overrides(overrides: Sequence[str]) -> List[str]:
    """Overrides that point outputs at relative paths, which would land in the job's throwaway working dir."""
    keys = ("output_dir=", "checkpoint_dir=", "train.output_dir=")
    flagged = []
    for override in overrides:
        for key in keys:
            if override.startswith(key):
                value = override[len(key):]
                if value and not value.startswith("/") and "://" not in value:
                    flagged.append(override)
    return flagged
