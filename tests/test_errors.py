"""Errors: remote exceptions keep their type and traceback; bad input gets a clear error."""

import threading

import pytest

import ember
from ember.exceptions import TaskError


class CustomError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code


@ember.remote
def raises(kind):
    if kind == "value":
        raise ValueError("bad value")
    raise CustomError(7, "custom")


def test_task_error_is_also_the_users_exception(cluster):
    with pytest.raises(ValueError) as info:
        ember.get(raises.remote("value"))
    error = info.value
    assert isinstance(error, TaskError)
    assert "bad value" in str(error)
    assert "Traceback" in str(error) and "raises" in str(error)  # the remote traceback


def test_custom_exception_class_with_arguments(cluster):
    with pytest.raises(CustomError) as info:
        ember.get(raises.remote("custom"))
    assert info.value.code == 7
    assert isinstance(info.value, TaskError)


def test_error_propagates_through_dependent_tasks(cluster):
    @ember.remote
    def consume(x):
        return x

    with pytest.raises(ValueError, match="bad value"):
        ember.get(consume.remote(raises.remote("value")))


def test_retry_exceptions(cluster, tmp_path):
    counter = tmp_path / "count"

    @ember.remote(max_retries=3, retry_exceptions=True)
    def flaky(path):
        import pathlib

        p = pathlib.Path(path)
        n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1))
        if n < 2:
            raise RuntimeError("try again")
        return n

    assert ember.get(flaky.remote(str(counter))) == 2

    @ember.remote(max_retries=3, retry_exceptions=[KeyError])
    def wrong_kind():
        raise RuntimeError("not retried")

    with pytest.raises(RuntimeError):
        ember.get(wrong_kind.remote())


def test_exceptions_are_not_retried_by_default(cluster, tmp_path):
    counter = tmp_path / "count"

    @ember.remote
    def once(path):
        with open(path, "a") as f:
            f.write("x")
        raise RuntimeError("no retry")

    with pytest.raises(RuntimeError):
        ember.get(once.remote(str(counter)))
    assert counter.read_text() == "x"


def test_calling_remote_function_directly(cluster):
    with pytest.raises(TypeError, match=r"raises\.remote\(\)"):
        raises("value")


def test_calling_actor_class_and_method_directly(cluster):
    @ember.remote
    class Counter:
        def incr(self):
            return 1

    with pytest.raises(TypeError, match=r"Counter\.remote\(\)"):
        Counter()
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"incr\.remote\(\)"):
        counter.incr()
    with pytest.raises(AttributeError):
        counter.missing.remote()


def test_get_of_non_ref(cluster):
    with pytest.raises(TypeError, match="ObjectRef"):
        ember.get(42)
    with pytest.raises(TypeError, match="ObjectRef"):
        ember.get([ember.put(1), "nope"])
    with pytest.raises(ValueError):
        ember.wait([ember.put(1)], num_returns=2)


def test_unpicklable_argument_is_named(cluster):
    @ember.remote
    def takes(x):
        return x

    with pytest.raises(TypeError, match="arguments of .*takes.*lock"):
        takes.remote(threading.Lock())
    with pytest.raises(TypeError, match="put"):
        ember.put(threading.Lock())
    assert ember.get(takes.remote(1)) == 1  # nothing was lost


def test_bad_options(cluster):
    with pytest.raises(ValueError, match="non-negative"):
        raises.options(num_cpus=-1)
    with pytest.raises(ValueError, match="Invalid option"):
        raises.options(num_cpu=1)
    with pytest.raises(ValueError, match="Invalid option"):
        ember.remote(bogus=1)(lambda: None)
    with pytest.raises(ValueError, match="num_cpus"):
        ember.remote(resources={"CPU": 1})(lambda: None)
    with pytest.raises(ValueError):
        ember.remote(resources={"custom": -1})(lambda: None)
    with pytest.raises(ValueError):
        ember.remote(num_returns=-1)(lambda: None)


def test_get_actor_missing_name(cluster):
    with pytest.raises(ValueError, match="no-such-actor"):
        ember.get_actor("no-such-actor")


def test_reinit_error(cluster):
    with pytest.raises(RuntimeError, match="already"):
        ember.init()
    assert ember.init(ignore_reinit_error=True) is not None


def test_infeasible_request_warns_and_stays_pending(cluster, capfd):
    @ember.remote(resources={"custom": 100})
    def too_big():
        return 1

    ref = too_big.remote()
    ready, _ = ember.wait([ref], timeout=1)
    assert ready == []
    from conftest import wait_for

    seen = []
    wait_for(
        lambda: seen.append(capfd.readouterr().err) or "no node" in "".join(seen),
        timeout=10,
        message="the infeasible warning",
    )
    assert "custom" in "".join(seen)
    ember.cancel(ref)
    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(ref, timeout=10)


def test_infeasible_actor_warns_and_stays_pending(cluster, capfd):
    @ember.remote(resources={"custom": 100})
    class TooBig:
        def ping(self):
            return 1

    actor = TooBig.remote()
    ref = actor.ping.remote()
    assert ember.wait([ref], timeout=0.5)[0] == []
    from conftest import wait_for

    seen = []
    wait_for(
        lambda: seen.append(capfd.readouterr().err) or "no node" in "".join(seen),
        timeout=10,
        message="the infeasible warning",
    )
    ember.kill(actor)
    with pytest.raises(ember.exceptions.ActorDiedError):
        ember.get(ref, timeout=10)


class TwoArgumentError(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def test_exception_that_cannot_be_rebuilt_still_reports_the_error(cluster):
    @ember.remote
    def fails():
        raise TwoArgumentError(1, 2)

    with pytest.raises(TaskError) as info:
        ember.get(fails.remote())
    assert "TwoArgumentError: 1-2" in str(info.value) and "Traceback" in str(info.value)
