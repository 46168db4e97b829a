"""Jobs: a shell command run as a driver on the shared cluster, through JobSubmissionClient and
`ember job`, against the real dashboard process (uvicorn) and real supervisor actors."""

import os
import re
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from ember.job_submission import JobStatus, JobSubmissionClient
from ember.job_submission.common import ended
from ember.util.state import list_actors
from tests.conftest import wait_for

PY = sys.executable


@pytest.fixture
def client(cluster):
    url = cluster.dashboard_url
    assert url and url.startswith("http://127.0.0.1:")
    with JobSubmissionClient(url) as job_client:
        submitted = []
        original = job_client.submit_job

        def submit(**kwargs):
            submitted.append(original(**kwargs))
            return submitted[-1]

        job_client.submit_job = submit
        yield job_client
        for submission_id in submitted:
            # No supervisor and no job driver may outlive the test.
            try:
                job_client.stop_job(submission_id)
                info = job_client.get_job_info(submission_id)
            except RuntimeError:  # the test deleted it
                info = None
            if info is not None and info.driver_pid:
                wait_for(lambda pid=info.driver_pid: not psutil.pid_exists(pid), message="the job's driver to exit")
            wait_for(
                lambda name=f"_job_supervisor_{submission_id}": (
                    not [a for a in list_actors(limit=100_000) if a.name == name and a.state != "DEAD"]
                ),
                message="the job's supervisor to end",
            )


def wait_status(client, submission_id, timeout=60):
    return wait_for(
        lambda: (s := client.get_job_status(submission_id)).is_terminal() and s,
        timeout=timeout,
        message=f"job {submission_id} to end",
    )


def test_websocket_origin_rule():
    from ember.dashboard.job_routes import same_origin

    assert same_origin(None, "127.0.0.1:8265")
    assert same_origin("http://127.0.0.1:8265", "127.0.0.1:8265")
    assert not same_origin("http://evil.example", "127.0.0.1:8265")
    assert not same_origin("http://127.0.0.1:9999", "127.0.0.1:8265")


def test_status_rules():
    assert ended(0, False)[0] == JobStatus.SUCCEEDED
    assert ended(2, False) == (JobStatus.FAILED, "Job entrypoint command failed with exit code 2.")
    assert "SIGKILL" in ended(-9, False)[1]
    assert ended(-15, True)[0] == JobStatus.STOPPED


def test_submit_status_logs_list_delete(client):
    code = (
        "import os, ember; ember.init(); print(os.environ['GREETING'], ember.get(ember.remote(lambda: 6 * 7).remote()))"
    )
    submission_id = client.submit_job(
        entrypoint=f"{PY} -c {code!r}",
        runtime_env={"env_vars": {"GREETING": "hello"}},
        metadata={"owner": "tests"},
        submission_id="test_submit_status_logs",
    )
    assert submission_id == "test_submit_status_logs"
    assert wait_status(client, submission_id) == JobStatus.SUCCEEDED, client.get_job_logs(submission_id)
    assert client.get_job_logs(submission_id) == "hello 42\n"
    info = client.get_job_info(submission_id)
    assert (info.driver_exit_code, info.metadata, info.end_time >= info.start_time) == (0, {"owner": "tests"}, True)
    assert submission_id in [job.submission_id for job in client.list_jobs()]
    with pytest.raises(RuntimeError, match="already exists"):
        client.submit_job(entrypoint="true", submission_id=submission_id)
    assert client.stop_job(submission_id) is False  # it had ended
    assert client.delete_job(submission_id) is True
    assert submission_id not in [job.submission_id for job in client.list_jobs()]
    with pytest.raises(RuntimeError, match="does not exist"):
        client.get_job_status(submission_id)


def test_failing_entrypoint_and_bad_request(client):
    submission_id = client.submit_job(entrypoint="echo oops >&2; exit 3")
    assert wait_status(client, submission_id) == JobStatus.FAILED
    info = client.get_job_info(submission_id)
    assert (info.driver_exit_code, info.error_type) == (3, "JOB_ENTRYPOINT_COMMAND_ERROR")
    assert client.get_job_logs(submission_id) == "oops\n"
    with pytest.raises(RuntimeError, match="runtime_env fields"):
        client.submit_job(entrypoint="true", runtime_env={"conda": "x"})
    with pytest.raises(RuntimeError, match="submission_id must be"):
        client.submit_job(entrypoint="true", submission_id="bad id!")
    client.delete_job(submission_id)


JOB_WITH_WORK = """
import os, time, ember
ember.init()

@ember.remote
class Holder:
    def pid(self):
        return os.getpid()

@ember.remote
def sleeper():
    print("task pid", os.getpid(), flush=True)
    time.sleep(600)

holder = Holder.options(name="job_holder").remote()
print("actor pid", ember.get(holder.pid.remote()), flush=True)
ref = sleeper.remote()
time.sleep(600)
"""


def start_job_with_work(client, tmp_path) -> tuple:
    """Submit JOB_WITH_WORK and wait until its actor and task run: (submission id, {"task", "actor",
    "driver": pid})."""
    script = tmp_path / "work.py"
    script.write_text(textwrap.dedent(JOB_WITH_WORK))
    submission_id = client.submit_job(entrypoint=f"{PY} {script}")
    logs = wait_for(
        lambda: "task pid" in (text := client.get_job_logs(submission_id)) and "actor pid" in text and text,
        timeout=60,
        message="the job's actor and task to start",
    )
    # The task's print comes through the driver, prefixed with the task's name and pid.
    pids = {what: int(pid) for what, pid in re.findall(r"(task|actor) pid (\d+)", logs)}
    pids["driver"] = client.get_job_info(submission_id).driver_pid
    return submission_id, pids


def test_stop_ends_the_driver_its_tasks_and_actors(client, tmp_path):
    submission_id, pids = start_job_with_work(client, tmp_path)
    assert client.get_job_status(submission_id) == JobStatus.RUNNING
    assert client.stop_job(submission_id) is True
    assert wait_status(client, submission_id) == JobStatus.STOPPED
    for what, pid in pids.items():
        wait_for(lambda pid=pid: not psutil.pid_exists(pid), message=f"the stopped job's {what} (pid {pid}) to be gone")
    assert [a.state for a in list_actors(limit=100_000) if a.name == "job_holder"] == ["DEAD"]


def test_driver_killed_mid_run_is_failed(client):
    submission_id = client.submit_job(
        entrypoint=f"exec {PY} -c 'import time; print(\"up\", flush=True); time.sleep(600)'"
    )
    wait_for(lambda: client.get_job_logs(submission_id) == "up\n", timeout=60, message="the job to start")
    os.kill(client.get_job_info(submission_id).driver_pid, signal.SIGKILL)
    assert wait_status(client, submission_id) == JobStatus.FAILED
    assert "SIGKILL" in client.get_job_info(submission_id).message


def test_tail_job_logs_streams_until_the_end(client):
    import asyncio

    submission_id = client.submit_job(entrypoint="for i in 1 2 3; do echo line $i; sleep 0.3; done")

    async def collect():
        return "".join([chunk async for chunk in client.tail_job_logs(submission_id)])

    assert asyncio.run(collect()) == "line 1\nline 2\nline 3\n"
    assert client.get_job_status(submission_id) == JobStatus.SUCCEEDED


def test_tail_is_a_websocket_that_sees_lines_printed_after_it_connected(client, tmp_path):
    import asyncio

    go = tmp_path / "go"
    submission_id = client.submit_job(
        entrypoint=f"echo before; while [ ! -e {go} ]; do sleep 0.05; done; echo after; sleep 0.2; echo last"
    )

    async def follow():
        chunks = []
        async for chunk in client.tail_job_logs(submission_id):
            chunks.append(chunk)
            if "before" in "".join(chunks) and not go.exists():
                # Only now, with the tail connected and reading, may the job print the rest.
                go.touch()
        return "".join(chunks)

    assert asyncio.run(follow()) == "before\nafter\nlast\n"
    assert client.get_job_status(submission_id) == JobStatus.SUCCEEDED

    async def unknown():
        return [chunk async for chunk in client.tail_job_logs("no_such_job")]

    with pytest.raises(RuntimeError, match="does not exist"):
        asyncio.run(unknown())

    async def from_another_site():
        from websockets.asyncio.client import connect

        url = f"ws{client.address[4:]}/api/jobs/{submission_id}/logs/tail"
        async with connect(url, additional_headers={"Origin": "http://elsewhere.example"}) as ws:
            return await ws.recv()

    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus, match="403"):  # a page of another site may not read the logs
        asyncio.run(from_another_site())


def ember_job(*args, timeout=90):
    return subprocess.run(
        [PY, "-m", "ember.cli", "job", *args], capture_output=True, text=True, timeout=timeout, cwd=os.getcwd()
    )


def test_cli_submit_waits_and_exits_with_the_job_status(cluster, tmp_path):
    url = cluster.dashboard_url
    (tmp_path / "data.txt").write_text("from the working dir")
    done = ember_job(
        "submit",
        "--address",
        url,
        "--working-dir",
        str(tmp_path),
        "--submission-id",
        "cli_ok",
        "--runtime-env-json",
        '{"env_vars": {"X": "1"}}',
        "--",
        "sh",
        "-c",
        'cat data.txt; echo " X=$X"',
    )
    assert done.returncode == 0, done.stderr
    assert "from the working dir X=1" in done.stdout
    failed = ember_job("submit", "--address", url, "--submission-id", "cli_fail", "--", "sh", "-c", "exit 4")
    assert failed.returncode == 1 and "failed" in failed.stderr
    for submission_id in ("cli_ok", "cli_fail"):
        assert ember_job("delete", "--address", url, submission_id).returncode == 0


def test_cli_no_wait_status_logs_stop_list_delete(cluster):
    url = cluster.dashboard_url
    submitted = ember_job(
        "submit",
        "--address",
        url,
        "--no-wait",
        "--submission-id",
        "cli_long",
        "--",
        PY,
        "-c",
        "import time; print('started', flush=True); time.sleep(600)",
    )
    assert submitted.returncode == 0 and submitted.stdout.strip() == "cli_long", submitted.stderr
    # The submitting process has gone; the job runs on.
    wait_for(
        lambda: "started" in ember_job("logs", "--address", url, "cli_long").stdout,
        timeout=60,
        message="the job's output",
    )
    assert "RUNNING" in ember_job("status", "--address", url, "cli_long").stdout
    assert "cli_long" in ember_job("list", "--address", url).stdout
    refused = ember_job("delete", "--address", url, "cli_long")
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    assert ember_job("stop", "--address", url, "cli_long").returncode == 0
    assert "STOPPED" in ember_job("status", "--address", url, "cli_long").stdout
    followed = ember_job("logs", "--address", url, "--follow", "cli_long")
    assert followed.stdout == "started\n"
    assert ember_job("delete", "--address", url, "cli_long").returncode == 0
    missing = ember_job("status", "--address", url, "cli_long")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


WORKING_DIR_MAIN = """
import os, sys, ember
import job_helper_mod  # from the working_dir's root, on the path though this script is in sub/

ember.init()

@ember.remote
def in_task():
    import job_helper_mod
    return job_helper_mod.VALUE, os.getcwd()

print("driver", job_helper_mod.VALUE, os.getcwd())
print("task", *ember.get(in_task.remote()))
"""


def test_working_dir_is_uploaded_and_the_jobs_tasks_run_in_it(client, tmp_path):
    (tmp_path / "job_helper_mod.py").write_text("VALUE = 'from-the-working-dir'\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "main.py").write_text(textwrap.dedent(WORKING_DIR_MAIN))
    (tmp_path / "big.log").write_text("left out")
    submission_id = client.submit_job(
        entrypoint="python sub/main.py", runtime_env={"working_dir": str(tmp_path), "excludes": ["*.log"]}
    )
    assert wait_status(client, submission_id) == JobStatus.SUCCEEDED, client.get_job_logs(submission_id)
    lines = dict(line.split(" ", 1) for line in client.get_job_logs(submission_id).splitlines())
    value, driver_cwd = lines["driver"].split()
    assert value == "from-the-working-dir" and driver_cwd != str(tmp_path)
    assert lines["task"].split() == [value, driver_cwd]  # the job's env is its tasks' default
    assert not os.path.exists(os.path.join(driver_cwd, "big.log"))
    uri = client.get_job_info(submission_id).runtime_env["working_dir"]
    assert uri.startswith("ember_pkg://")
    assert client._request("GET", f"/api/packages/ember/{uri[len('ember_pkg://') :]}").status_code == 200
    # The same content is the same package: a second job names the same URI.
    again = client.submit_job(
        entrypoint="test -f job_helper_mod.py", runtime_env={"working_dir": str(tmp_path), "excludes": ["*.log"]}
    )
    assert wait_status(client, again) == JobStatus.SUCCEEDED
    assert client.get_job_info(again).runtime_env["working_dir"] == uri


def test_missing_working_dir_is_a_clear_error(client, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(RuntimeError, match="nowhere"):
        client.submit_job(entrypoint="true", runtime_env={"working_dir": missing})


PIP_MAIN = """
import sys, ember, termcolor
ember.init()

@ember.remote
def in_task():
    import termcolor
    return termcolor.__file__

print("driver", termcolor.__file__, sys.prefix)
print("task", ember.get(in_task.remote()))
"""


def test_pip_requirement_is_the_jobs_and_its_tasks(client, tmp_path):
    from tests.test_runtime_env import SMALL_PACKAGE, _registry_reachable

    if not _registry_reachable():
        pytest.skip(f"the package registry is not reachable from this machine ({SMALL_PACKAGE})")
    (tmp_path / "main.py").write_text(textwrap.dedent(PIP_MAIN))
    submission_id = client.submit_job(
        entrypoint="python main.py", runtime_env={"working_dir": str(tmp_path), "pip": [SMALL_PACKAGE]}
    )
    assert wait_status(client, submission_id, timeout=600) == JobStatus.SUCCEEDED, client.get_job_logs(submission_id)
    lines = dict(line.split(" ", 1) for line in client.get_job_logs(submission_id).splitlines())
    driver_file, prefix = lines["driver"].split()
    assert prefix != sys.prefix and driver_file.startswith(prefix)  # `python` is the venv's
    assert lines["task"] == driver_file


def test_pip_spec_that_does_not_resolve_fails_the_job_with_pips_message(client):
    submission_id = client.submit_job(entrypoint="true", runtime_env={"pip": ["ember-no-such-job-package==0.0.1"]})
    assert wait_status(client, submission_id, timeout=600) == JobStatus.FAILED
    info = client.get_job_info(submission_id)
    assert "ember-no-such-job-package" in info.message, info.message
    assert info.error_type == "RUNTIME_ENV_SETUP_FAILURE"


def test_logs_of_a_driver_on_another_node(tmp_path, monkeypatch):
    """The supervisor goes where the entrypoint's resources are: a second node manager. Its log file is
    on that node; the dashboard serves the copy the supervisor keeps in the head."""
    import asyncio

    from multinode import LocalCluster

    monkeypatch.setenv("EMBER_DASHBOARD_PORT", "0")
    cluster = LocalCluster({"CPU": 1.0})
    try:
        url = cluster.nodes[0]["dashboard_url"]
        other = cluster.add_node({"CPU": 1.0, "job_node": 1.0})
        go = tmp_path / "go"
        with JobSubmissionClient(url) as remote_client:
            submission_id = remote_client.submit_job(
                entrypoint=f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second",
                entrypoint_resources={"job_node": 1},
            )

            async def follow():
                chunks = []
                async for chunk in remote_client.tail_job_logs(submission_id):
                    chunks.append(chunk)
                    if "first" in "".join(chunks):
                        go.touch()
                return "".join(chunks)

            assert asyncio.run(follow()) == "first\nsecond\n"
            info = remote_client.get_job_info(submission_id)
            assert (info.status, info.driver_node_id, info.log_in_head) == (JobStatus.SUCCEEDED, other["node_id"], True)
            assert remote_client.get_job_logs(submission_id) == "first\nsecond\n"
            assert remote_client.delete_job(submission_id)
    finally:
        cluster.stop()


def test_supervisor_killed_mid_run_fails_the_job_and_ends_its_driver_and_work(client, tmp_path):
    submission_id, pids = start_job_with_work(client, tmp_path)
    supervisor = next(
        a for a in list_actors(limit=100_000) if a.name == f"_job_supervisor_{submission_id}" and a.state == "ALIVE"
    )
    os.kill(supervisor.pid, signal.SIGKILL)
    assert wait_status(client, submission_id) == JobStatus.FAILED
    assert client.get_job_info(submission_id).error_type == "JOB_SUPERVISOR_ACTOR_DIED"
    # Its driver dies with it (job_driver.py sees the supervisor's pipe close), and with the driver its work.
    for what, pid in pids.items():
        wait_for(lambda pid=pid: not psutil.pid_exists(pid), message=f"the failed job's {what} (pid {pid}) to be gone")
    wait_for(
        lambda: [a.state for a in list_actors(limit=100_000) if a.pid == pids["actor"]] == ["DEAD"],
        message="the job's actor to be dead",
    )


def test_cli_submit_of_a_job_stopped_meanwhile_exits_3(client):
    url = client.address
    waiting = subprocess.Popen(
        [PY, "-m", "ember.cli", "job", "submit", "--address", url, "--submission-id", "cli_stopped", "--", "sh", "-c"]
        + ["echo up; sleep 600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: (
                "cli_stopped" in [job.submission_id for job in client.list_jobs()]
                and client.get_job_logs("cli_stopped") == "up\n"
            ),
            timeout=60,
            message="the job to start",
        )
        assert ember_job("stop", "--address", url, "cli_stopped").returncode == 0
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 3, err
    assert out == "up\n" and "stopped" in err
    assert ember_job("delete", "--address", url, "cli_stopped").returncode == 0


def test_package_routes_check_names_and_content(client):
    import hashlib

    data = os.urandom(64)
    key = hashlib.sha256(data).hexdigest()
    path = f"/api/packages/ember/{key}"
    assert client._request("GET", path).status_code == 404
    assert client._request("PUT", path, content=data + b"x").status_code == 400  # not what its name says
    assert client._request("GET", "/api/packages/ember/not-a-hash").status_code == 400
    assert client._request("PUT", path, content=data).status_code == 200
    assert client._request("GET", path).status_code == 200
