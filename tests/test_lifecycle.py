"""Starting, connecting and stopping: nothing may be left behind, whatever way a driver ends."""

import glob
import os
import signal
import subprocess
import sys
import textwrap

from conftest import ember_processes, run_driver, shared_cluster_pids, wait_for

import ember


def _own_leftovers(prefix):
    import glob

    ours = shared_cluster_pids()
    return [p for p in ember_processes() if p.pid not in ours] + glob.glob(f"/dev/shm/{prefix}-*")


def test_shutdown_leaves_nothing():
    result = run_driver("""
        import numpy as np, ember
        from ember import api
        ember.init(num_cpus=2)
        ember.get(ember.put(np.zeros(1_000_000)))
        @ember.remote
        class A:
            def f(self): return 1
        a = A.remote()
        ember.get(a.f.remote())
        print(api._cluster_process.store_prefix)
        ember.shutdown()
        print(ember.is_initialized())
    """)
    prefix, initialized = result.stdout.split()
    assert initialized == "False"
    wait_for(lambda: not _own_leftovers(prefix), message="no leftovers after shutdown()")


def test_normal_exit_without_shutdown_leaves_nothing():
    result = run_driver("""
        import numpy as np, ember
        from ember import api
        ember.init(num_cpus=2)
        ref = ember.put(np.zeros(1_000_000))
        print(api._cluster_process.store_prefix)
    """)
    prefix = result.stdout.strip()
    wait_for(lambda: not _own_leftovers(prefix), message="no leftovers after a normal exit")


def test_sigkilled_driver_leaves_nothing():
    code = textwrap.dedent("""
        import sys, time, numpy as np, ember
        from ember import api
        ember.init(num_cpus=2)
        ref = ember.put(np.zeros(1_000_000))
        @ember.remote
        def forever():
            time.sleep(600)
        running = forever.remote()
        print(api._cluster_process.store_prefix, flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    prefix = process.stdout.readline().strip()
    assert prefix.startswith("ember-")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    wait_for(lambda: not _own_leftovers(prefix), timeout=20, message="no leftovers after the driver was SIGKILLed")


def test_implicit_init_and_context():
    result = run_driver("""
        import ember
        @ember.remote
        def f():
            return 3
        print(ember.is_initialized())
        print(ember.get(f.remote()))   # initialises implicitly, as Ray does
        print(ember.is_initialized())
    """)
    assert result.stdout.split() == ["False", "3", "True"]


def test_context_repr(cluster):
    text = repr(cluster)
    assert "address=" in text and "CPU: 4" in text and "nodes=1" in text
    page = cluster._repr_html_()
    assert "<table>" in page and "CPU" in page


def test_second_driver_connects_by_address_and_detached_actors(cluster):
    address = cluster.address_info["address"]
    run_driver(f"""
        import ember
        ember.init(address="{address}", namespace="shared")
        @ember.remote
        class Keeper:
            def __init__(self): self.items = []
            def add(self, x): self.items.append(x); return len(self.items)
        keeper = Keeper.options(name="keeper", lifetime="detached").remote()
        temporary = Keeper.options(name="temporary").remote()
        assert ember.get(keeper.add.remote("a")) == 1
        assert ember.get(temporary.add.remote("a")) == 1
        assert len(ember.nodes()) == 1
    """)
    # The first driver exited: its detached actor lives on, its ordinary named actor is gone.
    keeper = ember.get_actor("keeper", namespace="shared")
    assert ember.get(keeper.add.remote("b")) == 2
    wait_for(lambda: _missing("temporary", "shared"), message="the job's non-detached actor to die")
    ember.kill(keeper)


def _missing(name, namespace):
    try:
        ember.get_actor(name, namespace=namespace)
        return False
    except ValueError:
        return True


def test_address_auto_and_env(cluster):
    result = run_driver("""
        import ember
        ember.init(address="auto")
        @ember.remote
        def f(): return "via auto"
        print(ember.get(f.remote()))
    """)
    assert result.stdout.strip() == "via auto"
    result = run_driver(
        """
        import ember
        ember.init()
        print(ember.cluster_resources()["CPU"])
    """,
        env={"EMBER_ADDRESS": cluster.address_info["address"]},
    )
    assert result.stdout.strip() == "4.0"


def test_worker_output_reaches_the_driver():
    result = run_driver("""
        import sys, time, ember
        ember.init(num_cpus=1)
        @ember.remote
        def speak():
            print("hello from a task")
            print("to stderr", file=sys.stderr)
        @ember.remote
        class Talker:
            def say(self):
                print("hello from an actor")
        class Tee:  # capture what the driver prints, to wait for the (batched) worker logs
            def __init__(self, stream): self.stream, self.text = stream, ""
            def write(self, s): self.text += s; return self.stream.write(s)
            def flush(self): self.stream.flush()
        sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)
        ember.get(speak.remote())
        t = Talker.remote()
        ember.get(t.say.remote())
        deadline = time.monotonic() + 20
        def arrived():
            return "hello from an actor" in sys.stdout.text and "to stderr" in sys.stderr.text
        while time.monotonic() < deadline and not arrived():
            time.sleep(0.02)
        ember.shutdown()
    """)
    assert "(speak pid=" in result.stdout and ") hello from a task" in result.stdout
    assert "(Talker pid=" in result.stdout and "hello from an actor" in result.stdout
    assert ") to stderr" in result.stderr


def test_log_to_driver_false():
    result = run_driver("""
        import time, ember
        ember.init(num_cpus=1, log_to_driver=False)
        @ember.remote
        def speak():
            print("should not appear")
        @ember.remote
        def marker():
            print("marker line")
        ember.get(speak.remote())
        ember.get(marker.remote())
        ember.shutdown()
    """)
    assert "should not appear" not in result.stdout


def test_connect_to_missing_cluster():
    result = run_driver(
        """
        import ember
        try:
            ember.init(address="127.0.0.1:1")
        except ConnectionError as error:
            print("ConnectionError", error)
    """,
        timeout=60,
    )
    assert result.stdout.startswith("ConnectionError")


def test_connected_driver_frees_its_objects_on_shutdown(cluster):
    from ember import api

    prefix = api._cluster_process.store_prefix
    before = set(glob.glob(f"/dev/shm/{prefix}-*"))
    result = run_driver(f"""
        import glob, numpy as np, ember
        ember.init(address="{cluster.address_info["address"]}")
        ref = ember.put(np.zeros(1_000_000))
        print(len(set(glob.glob("/dev/shm/{prefix}-*")) - set({sorted(before)!r})))
        ember.shutdown()
    """)
    assert result.stdout.strip() == "1"
    wait_for(lambda: set(glob.glob(f"/dev/shm/{prefix}-*")) <= before, message="the driver's objects to be freed")


def test_job_runtime_env_applies_to_all_its_tasks(cluster):
    # On a cluster the driver did not start, the job's env_vars still reach its tasks and actors.
    result = run_driver(f"""
        import os, ember
        ember.init(address="{cluster.address_info["address"]}", runtime_env={{"env_vars": {{"JOB_VAR": "job"}}}})
        @ember.remote
        def read(name):
            return os.environ.get(name)
        @ember.remote
        def nested():
            return ember.get(read.remote("JOB_VAR"))
        @ember.remote
        class Reader:
            def read(self):
                return os.environ.get("JOB_VAR")
        print(ember.get(read.remote("JOB_VAR")), ember.get(nested.remote()), ember.get(Reader.remote().read.remote()),
              ember.get(read.options(runtime_env={{"env_vars": {{"JOB_VAR": "task"}}}}).remote("JOB_VAR")))
    """)
    assert result.stdout.split() == ["job", "job", "job", "task"]

    @ember.remote
    def read_here():
        return os.environ.get("JOB_VAR")

    assert ember.get(read_here.remote()) is None  # another job's variables never leak into ours


def test_unpickling_a_ref_without_a_client_starts_no_cluster(cluster):
    # Only the public API starts a cluster on first use; a ref arriving in a process that is not
    # connected is an error, not a new cluster behind the user's back.
    import pickle

    data = pickle.dumps(ember.put(1))
    result = run_driver(
        f"""
        import pickle, ember
        try:
            pickle.loads({data!r})
        except RuntimeError as error:
            print("refused:", error)
        print("initialized:", ember.is_initialized())
        """
    )
    assert "refused: This process is not connected to an Ember cluster" in result.stdout
    assert "initialized: False" in result.stdout
