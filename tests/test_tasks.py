"""Tasks: arguments, returns, the dynamic task graph, options and streaming."""

import asyncio
import os

import numpy as np
import pytest

import ember
from ember.runtime.client.object_ref import ObjectRef


@ember.remote
def double(x):
    return x * 2


@ember.remote
def add(a, b=0, *, c=0):
    return a + b + c


def test_task_runs_and_returns(cluster):
    assert ember.get(double.remote(21)) == 42
    assert ember.get([double.remote(i) for i in range(20)]) == [i * 2 for i in range(20)]


def test_keyword_arguments(cluster):
    assert ember.get(add.remote(1, b=2, c=3)) == 6
    assert ember.get(add.remote(1, c=ember.put(10))) == 11


def test_top_level_refs_are_resolved_nested_refs_stay_refs(cluster):
    @ember.remote
    def inspect(value, container):
        return type(value).__name__, type(container[0]).__name__, ember.get(container[0])

    ref = ember.put(5)
    assert ember.get(inspect.remote(ref, [ref])) == ("int", "ObjectRef", 5)


def test_chained_tasks_form_a_graph(cluster):
    a = double.remote(1)
    b = double.remote(a)
    c = add.remote(a, b)
    assert ember.get(c) == 6


def test_task_returns_a_ref(cluster):
    @ember.remote
    def make():
        return ember.put("inner"), double.remote(4)

    inner, task_ref = ember.get(make.remote())
    assert isinstance(inner, ObjectRef)
    assert ember.get(inner) == "inner"
    assert ember.get(task_ref) == 8


def test_multiple_returns(cluster):
    @ember.remote(num_returns=3)
    def three():
        return 1, 2, 3

    refs = three.remote()
    assert len(refs) == 3
    assert ember.get(refs) == [1, 2, 3]
    assert three.options(num_returns=1).remote() is not None


def test_zero_returns(cluster):
    @ember.remote(num_returns=0)
    def nothing():
        return None

    assert nothing.remote() is None


def test_nested_tasks_do_not_deadlock(cluster):
    # More waiting parents than CPUs: parents blocked in get() must lend their CPU to children.
    @ember.remote
    def fib(n):
        if n < 2:
            return n
        return sum(ember.get([fib.remote(n - 1), fib.remote(n - 2)]))

    assert ember.get(fib.remote(8), timeout=120) == 21
    # Every lease taken by the nested owners comes back, and every lent CPU is returned.
    from conftest import wait_for

    wait_for(lambda: ember.available_resources().get("CPU") == 4, message="all CPUs to be free again")


def test_large_arguments_and_results(cluster):
    array = np.arange(2_000_000, dtype=np.float64)

    @ember.remote
    def total(a):
        return a.sum(), a * 2

    @ember.remote(num_returns=2)
    def split(a):
        return a.sum(), a * 2

    s, doubled = split.remote(array)
    assert ember.get(s) == array.sum()
    np.testing.assert_array_equal(ember.get(doubled), array * 2)
    assert ember.get(total.remote(array))[0] == array.sum()


def test_options_and_max_calls(cluster):
    @ember.remote(max_calls=1)
    def pid():
        return os.getpid()

    pids = [ember.get(pid.remote()) for _ in range(3)]
    assert len(set(pids)) == 3  # each worker exits after one call
    assert ember.get(double.options(num_cpus=0.5, name="half").remote(2)) == 4


def test_runtime_env_vars(cluster):
    @ember.remote(runtime_env={"env_vars": {"EMBER_TEST_VAR": "hello"}})
    def read():
        return os.environ.get("EMBER_TEST_VAR")

    @ember.remote
    def read_plain():
        return os.environ.get("EMBER_TEST_VAR")

    assert ember.get(read.remote()) == "hello"
    assert ember.get(read_plain.remote()) is None
    assert ember.get(read_plain.options(runtime_env={"env_vars": {"EMBER_TEST_VAR": "x"}}).remote()) == "x"


def test_streaming_generator(cluster):
    @ember.remote(num_returns="streaming")
    def count(n):
        for i in range(n):
            yield i * i

    generator = count.remote(5)
    assert [ember.get(ref) for ref in generator] == [0, 1, 4, 9, 16]


def test_streaming_generator_error(cluster):
    @ember.remote(num_returns="streaming")
    def fails():
        yield 1
        raise ValueError("stream broke")

    refs = list(fails.remote())
    assert ember.get(refs[0]) == 1
    with pytest.raises(ValueError, match="stream broke"):
        ember.get(refs[1])


def test_await_and_future(cluster):
    ref = double.remote(5)
    assert ref.future().result(timeout=30) == 10

    async def main():
        return await double.remote(6)

    assert asyncio.run(main()) == 12


def test_wait(cluster):
    @ember.remote
    def blocked(path):
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return 1

    import tempfile

    path = tempfile.mktemp()
    fast = [double.remote(i) for i in range(3)]
    slow = blocked.remote(path)
    ready, not_ready = ember.wait(fast + [slow], num_returns=3, timeout=30)
    assert set(ready) == set(fast) and not_ready == [slow]
    ready, not_ready = ember.wait([slow], timeout=0.1)
    assert ready == [] and not_ready == [slow]
    open(path, "w").close()
    ready, _ = ember.wait([slow], timeout=30)
    assert ready == [slow]
    os.unlink(path)


def test_get_timeout(cluster):
    @ember.remote
    def sleepy():
        import time

        time.sleep(30)

    ref = sleepy.remote()
    with pytest.raises(ember.exceptions.GetTimeoutError) as info:
        ember.get(ref, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    ember.cancel(ref, force=True)


def test_streaming_generator_is_not_rerun_after_it_yielded(cluster, tmp_path):
    marker = tmp_path / "ran"

    @ember.remote(num_returns="streaming", max_retries=2, retry_exceptions=True)
    def flaky(path):
        first_time = not os.path.exists(path)
        open(path, "a").close()
        yield 1
        yield 2
        if first_time:
            raise ValueError("first run fails")
        yield 3

    values = []
    for ref in flaky.remote(str(marker)):
        try:
            values.append(ember.get(ref))
        except ValueError:
            values.append("error")
    assert values == [1, 2, "error"]  # never [1, 2, 1, 2, 3]: the consumer already had 1 and 2


def test_tasks_that_can_run_in_parallel_do(cluster, tmp_path):
    # Four tasks on four CPUs meet at a barrier: run one after another, they would never all arrive.
    @ember.remote
    def meet(directory, me):
        import pathlib
        import time

        pathlib.Path(directory, str(me)).touch()
        deadline = time.monotonic() + 20
        while len(list(pathlib.Path(directory).iterdir())) < 4:
            if time.monotonic() > deadline:
                raise TimeoutError("the other tasks did not run at the same time")
            time.sleep(0.01)
        return me

    ember.get(double.remote(0))  # a lingering lease must not make the next tasks queue behind one another
    assert ember.get([meet.remote(str(tmp_path), i) for i in range(4)], timeout=60) == [0, 1, 2, 3]


def test_generator_functions_are_generator_tasks(cluster):
    @ember.remote
    def count(n):
        yield from range(n)

    @ember.remote(num_returns=3)
    def three():
        yield from (1, 2, 3)

    assert [ember.get(r) for r in count.remote(3)] == [0, 1, 2]
    assert ember.get(three.remote()) == [1, 2, 3]


def test_wrong_arguments_fail_at_remote(cluster):
    with pytest.raises(TypeError, match="add.remote"):
        add.remote(1, 2, 3)
    with pytest.raises(TypeError, match="add.remote"):
        add.remote()

    @ember.remote
    def defaults(a, b=2, /, c=3):
        return a + b + c

    @ember.remote
    def varargs(a, *rest, key=0):
        return a + sum(rest) + key

    # Plain positional calls are checked by counting; the others by binding: both refuse the same.
    assert ember.get([defaults.remote(1), defaults.remote(1, 1, 1), defaults.remote(1, c=0)]) == [6, 3, 3]
    for call in (lambda: defaults.remote(), lambda: defaults.remote(1, 2, 3, 4), lambda: defaults.remote(1, b=1)):
        with pytest.raises(TypeError, match="defaults.remote"):
            call()
    assert ember.get([varargs.remote(1, 2, 3), varargs.remote(1, key=4)]) == [6, 5]
    with pytest.raises(TypeError, match="varargs.remote"):
        varargs.remote(key=1)

    @ember.remote
    class Needs:
        def __init__(self, value):
            self.value = value

    with pytest.raises(TypeError, match="Needs.remote"):
        Needs.remote()


def test_wait_on_no_refs(cluster):
    assert ember.wait([]) == ([], [])
