"""`alignray submit` and `alignray job status|logs|stop|list`: Ray Jobs API from the command line.

    alignray submit --address http://HEAD:8265 [--wait] [--working-dir DIR] [--job-id ID] -- <train overrides>
    alignray job status|logs|stop [--address URL] JOB_ID      alignray job list [--address URL]

The address defaults to RAY_API_SERVER_ADDRESS / RAY_ADDRESS; the token to RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
or ~/.ray/auth_token (see framework/cluster/jobs.py). Failures raise JobsError, which launch/cli.py prints as one
line (exit 2); a job that ends other than SUCCEEDED exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Tuple

from framework.cluster import jobs


def _split_overrides(argv: List[str]) -> Tuple[List[str], List[str]]:
    """Options before `--`, train overrides after it (they may look like options to argparse)."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _submit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignray submit", usage="%(prog)s [options] -- <train overrides>",
        description="Submit `alignray train <overrides>` to a Ray cluster as a job and print its id.",
        epilog="example: alignray submit --address http://head:8265 --wait -- objective=dpo "
               "cluster.num_workers=2 output_dir=/shared/runs/dpo1")
    parser.add_argument("--address", help="job API URL, e.g. http://head:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--wait", action="store_true", help="stream logs; exit 0 only if the job SUCCEEDED")
    code = parser.add_mutually_exclusive_group()
    code.add_argument("--working-dir", type=Path, help="code to upload (default: this checkout's root)")
    code.add_argument("--no-working-dir", action="store_true", help="run the code installed in the cluster image")
    parser.add_argument("--job-id", help="submission id to use (default: Ray generates one)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="env var for the job")
    parser.add_argument("--entrypoint", help="run this shell command instead of `alignray train <overrides>`")
    return parser


def _submit(argv: List[str]) -> int:
    options, overrides = _split_overrides(argv)
    args = _submit_parser().parse_args(options)
    if args.entrypoint and overrides:
        raise jobs.JobsError("give either --entrypoint or train overrides after `--`, not both")
    malformed = [item for item in args.env if "=" not in item]
    if malformed:
        raise jobs.JobsError(f"--env expects KEY=VALUE, got {malformed[0]!r}")
    env_vars = dict(item.split("=", 1) for item in args.env)
    working_dir = None if args.no_working_dir else (args.working_dir or jobs.project_root())
    if working_dir is None and not args.no_working_dir:
        print("alignray: not a source checkout; the job runs the alignray installed on the cluster", file=sys.stderr)
    for override in jobs.relative_output_overrides(overrides):
        print(f"alignray: warning: {override} is relative; it lands in the job's temporary working dir "
              "(use a path or URI the cluster shares)", file=sys.stderr)

    runtime_env = jobs.build_runtime_env(working_dir, env_vars)  # local checks before contacting the cluster
    session = jobs.JobsSession(args.address)
    entrypoint = args.entrypoint or jobs.train_entrypoint(overrides)
    job_id = session.submit(entrypoint, runtime_env, args.job_id)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    return _follow(session, job_id)


def _follow(session: jobs.JobsSession, job_id: str) -> int:
    """Stream the job's logs to stdout, then report its final state; 0 only for SUCCEEDED."""
    try:
        for chunk in session.tail(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        state = session.wait(job_id)
    except KeyboardInterrupt:
        print(f"\nalignray: detached; the job keeps running (alignray job stop {job_id})", file=sys.stderr)
        return 130
    info = session.info(job_id)
    reason = (session.diagnosis(job_id, info.message) if state == "FAILED" else None) or info.message
    print(f"alignray: job {job_id} {state}" + (f": {reason}" if state != "SUCCEEDED" else ""), file=sys.stderr)
    return 0 if state == "SUCCEEDED" else 1


def _job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray job", description="Inspect and control submitted jobs.")
    sub = parser.add_subparsers(dest="action", required=True)
    for action, help_ in (("status", "print the job's state"), ("logs", "print the job's logs"),
                          ("stop", "stop a running job"), ("list", "list the cluster's jobs")):
        cmd = sub.add_parser(action, help=help_)
        cmd.add_argument("--address", help="job API URL (default: $RAY_ADDRESS)")
        if action != "list":
            cmd.add_argument("job_id")
    sub.choices["logs"].add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    sub.choices["stop"].add_argument("--wait", action="store_true", help="wait until the job has stopped")
    return parser


def _job(argv: List[str]) -> int:
    args = _job_parser().parse_args(argv)
    session = jobs.JobsSession(args.address)
    if args.action == "status":
        info = session.info(args.job_id)
        failed = info.status.value == "FAILED"
        reason = (session.diagnosis(args.job_id, info.message) if failed else None) or info.message
        print(f"{info.status.value}" + (f": {reason}" if reason else ""))
    elif args.action == "logs":
        if args.follow:
            return _follow(session, args.job_id)
        sys.stdout.write(session.logs(args.job_id))
    elif args.action == "stop":
        print("stop requested" if session.stop(args.job_id) else "job had already finished")
        if args.wait:
            print(session.wait(args.job_id))
    else:
        for info in session.list():
            print(f"{info.submission_id or info.job_id}\t{info.status.value}\t{info.entrypoint}")
    return 0


def main(argv: List[str]) -> int:
    """Entry from `launch.cli`: argv[0] is "submit" or "job"."""
    command, rest = (argv[0], argv[1:]) if argv else ("job", [])
    return _submit(rest) if command == "submit" else _job(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
