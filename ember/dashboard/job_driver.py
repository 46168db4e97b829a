"""The parent of a job's entrypoint: it makes the entrypoint die with its supervisor.

Run by the supervisor as ``python -I job_driver.py FD -- /bin/sh -c <entrypoint>`` (by path, standard
library only, so it starts in a few milliseconds), as the leader of the job's process group. FD is the
read end of a pipe whose write end only the supervisor's process holds: EOF means the supervisor is
gone (SIGKILL, its node lost), and then the whole group is killed, so no driver outlives its job's
record of having failed. Otherwise it waits for the entrypoint and exits as it did, the same exit code
or the same signal, which is what the supervisor records.

SIGTERM and SIGINT (a stop signals the whole group) are left to the entrypoint: this process takes
them without dying, then ends with the entrypoint.
"""

import os
import signal
import subprocess
import sys
import threading


def _watch_supervisor(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os.killpg(0, signal.SIGKILL)  # ourselves included


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: job_driver.py FD -- COMMAND...")
    fd = int(sys.argv[1])
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # A handler, not SIG_IGN: the entrypoint must get the default dispositions back at its exec.
        signal.signal(signum, lambda *_: None)
    child = subprocess.Popen(sys.argv[3:], close_fds=True)
    threading.Thread(target=_watch_supervisor, args=(fd,), daemon=True).start()
    while True:
        try:
            returncode = child.wait()
            break
        except InterruptedError:
            continue
    if returncode < 0:
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
        returncode = 128 - returncode  # a signal whose default is not to end a process
    sys.exit(returncode)


if __name__ == "__main__":
    main()
