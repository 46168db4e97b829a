"""``ember job submit|status|logs|stop|list|delete``: Ray's ``ray job`` commands, through the
dashboard's REST API (ember.job_submission.JobSubmissionClient).

    ember job submit -- python script.py   --POST /api/jobs/--> dashboard; then streams
                                            /api/jobs/<id>/logs/tail and exits with the job's status
"""

import argparse
import asyncio
import json
import os
import shlex
import sys

EXIT_CODES = {"SUCCEEDED": 0, "STOPPED": 3}  # any other end: 1


def _client(args):
    from ember.job_submission import JobSubmissionClient

    return JobSubmissionClient(args.address)


def _runtime_env(args) -> dict:
    runtime_env = {}
    if args.runtime_env_json:
        try:
            runtime_env = json.loads(args.runtime_env_json)
        except ValueError as error:
            raise ValueError(f"--runtime-env-json is not JSON: {error}") from None
        if not isinstance(runtime_env, dict):
            raise ValueError("--runtime-env-json must be a JSON object.")
    if args.working_dir:
        runtime_env["working_dir"] = os.path.abspath(args.working_dir)
    return runtime_env


async def _stream(client, submission_id: str) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def _follow_to_end(client, submission_id: str) -> int:
    """Stream the logs until the job ends; the exit status its final status maps to."""
    asyncio.run(_stream(client, submission_id))
    status = str(client.get_job_status(submission_id))
    print(f"\n------------------------------------------\nJob '{submission_id}' {status.lower()}", file=sys.stderr)
    return EXIT_CODES.get(status, 1)


def cmd_submit(args) -> int:
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entrypoint:
        print(
            "ember job submit: give the entrypoint after --, e.g. ember job submit -- python script.py", file=sys.stderr
        )
        return 2
    runtime_env = _runtime_env(args)
    metadata = json.loads(args.metadata_json) if args.metadata_json else None
    client = _client(args)
    submission_id = client.submit_job(
        entrypoint=" ".join(shlex.quote(word) for word in entrypoint) if len(entrypoint) > 1 else entrypoint[0],
        submission_id=args.submission_id,
        runtime_env=runtime_env or None,
        metadata=metadata,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
        entrypoint_resources=json.loads(args.entrypoint_resources) if args.entrypoint_resources else None,
    )
    print(f"Job '{submission_id}' submitted successfully", file=sys.stderr)
    if args.no_wait:
        print(f"Query its status with: ember job status {submission_id}", file=sys.stderr)
        print(submission_id)
        return 0
    return _follow_to_end(client, submission_id)


def cmd_status(args) -> int:
    info = _client(args).get_job_info(args.job_id)
    print(f"Status for job '{args.job_id}': {info.status}")
    if info.message:
        print(f"Status message: {info.message}")
    return 0


def cmd_logs(args) -> int:
    client = _client(args)
    if args.follow:
        asyncio.run(_stream(client, args.job_id))
    else:
        sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def cmd_stop(args) -> int:
    client = _client(args)
    stopped = client.stop_job(args.job_id)
    print(f"Job '{args.job_id}' {'stopped' if stopped else 'had already ended'}")
    return 0


def cmd_list(args) -> int:
    jobs = _client(args).list_jobs()
    print(f"{'SUBMISSION ID':<32} {'STATUS':<10} ENTRYPOINT")
    for job in jobs:
        print(f"{job.submission_id:<32} {str(job.status):<10} {job.entrypoint}")
    return 0


def cmd_delete(args) -> int:
    _client(args).delete_job(args.job_id)
    print(f"Job '{args.job_id}' deleted")
    return 0


def add_parser(commands) -> None:
    """``ember job ...`` under the ``ember`` command's subcommands."""
    job = commands.add_parser("job", help="submit and follow jobs (through the dashboard)")
    sub = job.add_subparsers(dest="job_command", required=True)

    def command(name, func, help_text, with_id=True):
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument(
            "--address", default=None, help="the dashboard, http://HOST:PORT (default: this user's local cluster)"
        )
        if with_id:
            parser.add_argument("job_id", help="the job's submission id")
        parser.set_defaults(func=func)
        return parser

    submit = command("submit", cmd_submit, "run a shell command as a driver on the cluster", with_id=False)
    submit.add_argument("--submission-id", default=None)
    submit.add_argument(
        "--working-dir",
        default=None,
        help="a local directory, uploaded to the cluster: the driver's cwd, and its tasks'",
    )
    submit.add_argument("--runtime-env-json", default=None, help='e.g. \'{"env_vars": {"A": "1"}}\'')
    submit.add_argument("--metadata-json", default=None)
    submit.add_argument("--entrypoint-num-cpus", type=float, default=None)
    submit.add_argument("--entrypoint-num-gpus", type=float, default=None)
    submit.add_argument("--entrypoint-resources", default=None, help="JSON map of custom resources")
    submit.add_argument("--no-wait", action="store_true", help="return after submitting; print the id")
    submit.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command")
    command("status", cmd_status, "a job's status")
    logs = command("logs", cmd_logs, "a job's output")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
    command("stop", cmd_stop, "stop a job (SIGTERM, then SIGKILL)")
    command("list", cmd_list, "every job", with_id=False)
    command("delete", cmd_delete, "forget an ended job and its logs")


def run(args) -> int:
    """Run a ``job`` subcommand; errors become one line on stderr and exit status 1."""
    try:
        return args.func(args)
    except (ConnectionError, RuntimeError, PermissionError, ValueError, TypeError) as error:
        print(f"ember job {args.job_command}: {error}", file=sys.stderr)
        return 1
