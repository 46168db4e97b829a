"""Remote errors read as the user's own: their exception type, their frames (a notebook cell's as
``Cell In[n], line m`` with its source line), and none of Ember's unless Ember itself failed.

The notebook tests run a real kernel connected to the shared cluster and read each cell's error
output as a frontend would; the script test runs a separate driver process.
"""

import json
import re

import pytest
from conftest import run_driver

import ember
from ember.runtime import serialization

pytest.importorskip("ipykernel")

DEFINE_TASK = """
@ember.remote
def parse(text):
    fields = text.split(",")
    count = int(fields[1])
    return count
"""

DEFINE_ACTOR = """
@ember.remote
class Ledger:
    def __init__(self):
        self.entries = {}

    def balance(self, name):
        total = self.entries[name]
        return total

    def wrapped(self):
        try:
            return self.entries["nobody"]
        except KeyError as error:
            raise RuntimeError("no such account") from error

ledger = Ledger.remote()
"""

DEFINE_UNPICKLABLE = """
import threading

@ember.remote
def make_lock():
    return threading.Lock()
"""


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture(scope="module")
def notebook(cluster):
    """One kernel session: each defining cell, then each failing call, by step name."""
    from kernel_session import KernelSession

    kernel = KernelSession()
    cells = {}
    try:
        cells["init"] = kernel.execute(f"import ember\nember.init(address={json.dumps(cluster.address)})")
        cells["define_task"] = kernel.execute(DEFINE_TASK.strip())
        cells["task"] = kernel.execute('ember.get(parse.remote("a,b"))', allow_error=True)
        cells["define_actor"] = kernel.execute(DEFINE_ACTOR.strip())
        cells["method"] = kernel.execute('ember.get(ledger.balance.remote("alice"))', allow_error=True)
        cells["chained"] = kernel.execute("ember.get(ledger.wrapped.remote())", allow_error=True)
        cells["define_unpicklable"] = kernel.execute(DEFINE_UNPICKLABLE.strip())
        cells["unpicklable"] = kernel.execute("ember.get(make_lock.remote())", allow_error=True)
        cells["caught"] = kernel.execute(
            "try:\n    ember.get(parse.remote('x,y'))\nexcept ValueError as e:\n    print('caught', type(e).__name__)"
        )
        kernel.execute("ember.shutdown()")
    finally:
        kernel.shutdown()
    return cells


def _count(cell) -> int:
    return cell.reply["content"]["execution_count"]


def test_task_error_names_the_cell_and_its_line(notebook):
    error = notebook["task"].error()
    text = _strip_ansi("\n".join(error["traceback"]))
    assert error["ename"] == "ValueError"
    # The calling cell, then the task's own frame in the cell that defined it, with its source.
    assert f"Cell In[{_count(notebook['task'])}], line 1" in text
    assert f"Cell In[{_count(notebook['define_task'])}], line 4" in text
    assert "----> 4     count = int(fields[1])" in text
    assert "ValueError: invalid literal for int() with base 10: 'b'" in text
    assert "ember/" not in text and "<dynamic-code>" not in text and "ipykernel_" not in text
    assert "raised remotely in parse()" in text


def test_actor_method_error_names_the_cell_and_its_line(notebook):
    error = notebook["method"].error()
    text = _strip_ansi("\n".join(error["traceback"]))
    assert error["ename"] == "KeyError"
    assert f"Cell In[{_count(notebook['define_actor'])}], line 7" in text
    assert "----> 7         total = self.entries[name]" in text
    assert "KeyError: 'alice'" in text
    assert "ember/" not in text


def test_chained_remote_errors_show_both_exceptions(notebook):
    text = _strip_ansi("\n".join(notebook["chained"].error()["traceback"]))
    defined = _count(notebook["define_actor"])
    assert notebook["chained"].error()["ename"] == "RuntimeError"
    assert f"Cell In[{defined}], line 12" in text and 'return self.entries["nobody"]' in text
    assert "direct cause" in text
    assert f"Cell In[{defined}], line 14" in text and "RuntimeError: no such account" in text
    assert text.index("KeyError: 'nobody'") < text.index("RuntimeError: no such account")
    assert "ember/" not in text


def test_ember_failure_keeps_ember_frames_and_a_useful_cause(notebook):
    error = notebook["unpicklable"].error()
    text = _strip_ansi("\n".join(error["traceback"]))
    assert error["ename"] == "SerializationError"
    assert "Could not serialize return value 0 of type lock" in text
    assert "cannot pickle '_thread.lock' object" in text  # the cause, chained
    assert "ember/runtime/worker/worker.py" in text  # Ember failed: its frames are shown


def test_remote_error_is_caught_by_its_own_type(notebook):
    assert notebook["caught"].stdout() == "caught ValueError\n"


SCRIPT = """
import ember

@ember.remote
def parse(text):
    fields = text.split(",")
    count = int(fields[1])
    return count

@ember.remote
class Ledger:
    def balance(self, name):
        return {}[name]

ember.init(num_cpus=1)
try:
    ember.get(Ledger.remote().balance.remote("alice"))
except KeyError as error:
    print("METHOD", error)
ember.get(parse.remote("a,b"))
"""


def test_script_errors_show_file_line_and_source(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    result = run_driver(f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))", check=False)
    assert result.returncode == 1
    method = result.stdout[result.stdout.index("METHOD") :]
    assert f'File "{script}", line 13, in balance\n    return {{}}[name]' in method
    assert "KeyError: 'alice'" in method
    remote = result.stderr[result.stderr.index("parse() (pid=") :]
    assert f'File "{script}", line 7, in parse\n    count = int(fields[1])' in remote
    assert result.stderr.rstrip().endswith("ValueError: invalid literal for int() with base 10: 'b'")
    assert "ember/runtime" not in remote and "ember/runtime" not in method
    assert "ValueError: parse() (pid=" in result.stderr  # the user's type names the error


def test_script_ember_failure_shows_ember_frames(cluster):
    import threading

    @ember.remote
    def make_lock():
        return threading.Lock()

    with pytest.raises(serialization.SerializationError) as info:
        ember.get(make_lock.remote())
    assert isinstance(info.value, ember.exceptions.TaskError)
    assert "Could not serialize return value 0 of type lock" in str(info.value)
    assert any(frame[0].endswith("ember/runtime/worker/worker.py") for frame in info.value.frames)


def test_user_frames_only_when_the_user_code_raised(cluster):
    @ember.remote
    def nested_failure():
        def inner():
            raise LookupError("deep")

        inner()

    with pytest.raises(LookupError) as info:
        ember.get(nested_failure.remote())
    names = [frame[2] for frame in info.value.frames]
    assert names == ["nested_failure", "inner"]
    assert all(frame[0] == __file__ for frame in info.value.frames)
    assert 'raise LookupError("deep")' in str(info.value)


def test_functions_keep_their_file_name_through_pickling():
    def defined_here():
        return 1

    restored = serialization.deserialize(serialization.dumps_function(defined_here))
    assert restored.__code__.co_filename == __file__
    assert restored() == 1
    # Arguments (lambdas, nested functions) are pickled by value too, and keep theirs.
    data, buffers, _ = serialization.serialize({"f": lambda: 2, "pad": list(range(20))})
    assert serialization.deserialize(data, buffers)["f"].__code__.co_filename == __file__
