"""Runtime environments on a real cluster: workers started in their env, pooled per env; working_dir
and py_modules shipped through the head; pip envs in virtual environments made on the node."""

import os
import subprocess
import sys

import pytest

import ember
from ember.exceptions import RuntimeEnvSetupError
from ember.runtime.runtime_env import excluded, pack

SMALL_PACKAGE = "termcolor==2.4.0"  # small, pure Python, not installed here: it can only come from the venv


def test_env_vars_are_in_the_workers_environment_not_patched(cluster):
    @ember.remote(runtime_env={"env_vars": {"RTENV_A": "one"}})
    def read():
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ.get('RTENV_A'))"], capture_output=True, text=True
        )
        return os.environ.get("RTENV_A"), child.stdout.strip(), os.getpid()

    @ember.remote
    def plain():
        return os.environ.get("RTENV_A"), os.getpid()

    value, in_child, env_pid = ember.get(read.remote())
    assert (value, in_child) == ("one", "one")
    plain_value, plain_pid = ember.get(plain.remote())
    assert plain_value is None
    assert plain_pid != env_pid  # two envs, two workers
    other = ember.get(read.options(runtime_env={"env_vars": {"RTENV_A": "two"}}).remote())
    assert other[0] == "two" and other[2] not in (env_pid, plain_pid)
    assert ember.get(plain.remote())[0] is None  # never patched into a plain worker after the env's tasks ran


def test_actor_in_env_and_nested_tasks_inherit_it(cluster):
    @ember.remote
    def read(name):
        return os.environ.get(name)

    @ember.remote(runtime_env={"env_vars": {"RTENV_B": "actor"}})
    class Reader:
        def read(self):
            return os.environ.get("RTENV_B"), ember.get(read.remote("RTENV_B"))

    assert ember.get(Reader.remote().read.remote()) == ("actor", "actor")


def _project(tmp_path):
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "helper_mod.py").write_text("VALUE = 41\n")
    (root / "data" / "big.bin").write_bytes(b"x" * 1000)
    (root / "notes.log").write_text("left out\n")
    return root


def test_working_dir_is_the_cwd_and_importable_with_excludes(cluster, tmp_path):
    root = _project(tmp_path)

    @ember.remote(runtime_env={"working_dir": str(root), "excludes": ["*.log", "data/"]})
    def look():
        import helper_mod

        return (
            helper_mod.VALUE + 1,
            os.path.exists("helper_mod.py"),
            os.path.exists("notes.log"),
            os.path.exists("data"),
            os.getcwd(),
        )

    value, has_module, has_log, has_data, cwd = ember.get(look.remote())
    assert (value, has_module, has_log, has_data) == (42, True, False, False)
    assert cwd != str(root) and os.stat(os.path.dirname(cwd)).st_mode & 0o077 == 0  # unpacked in the private dir


def test_missing_working_dir_names_the_path(cluster, tmp_path):
    @ember.remote
    def nothing():
        return 1

    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        nothing.options(runtime_env={"working_dir": missing}).remote()


def test_size_limit_names_the_path_and_size(cluster, tmp_path, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.setenv("EMBER_RUNTIME_ENV_MAX_BYTES", "100")

    @ember.remote
    def nothing():
        return 1

    with pytest.raises(ValueError, match=r"project.*MiB.*limit"):
        nothing.options(runtime_env={"working_dir": str(root)}).remote()


def test_py_modules_directory_and_file(cluster, tmp_path):
    package = tmp_path / "rtenv_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("NAME = 'pkg'\n")
    single = tmp_path / "rtenv_single.py"
    single.write_text("NAME = 'single'\n")

    @ember.remote(runtime_env={"py_modules": [str(package), str(single)]})
    def names():
        import rtenv_pkg
        import rtenv_single

        return rtenv_pkg.NAME, rtenv_single.NAME

    assert ember.get(names.remote()) == ("pkg", "single")


def test_unknown_field_is_a_clear_error():
    with pytest.raises(ValueError, match="conda"):
        ember.remote(runtime_env={"conda": "env"})(lambda: 1)


def test_excludes_are_gitignore_style(tmp_path):
    assert excluded("a/b/c.log", False, ["*.log"])
    assert excluded("build", True, ["build/"]) and not excluded("build", False, ["build/"])
    assert excluded("src/gen/x.py", False, ["src/gen/*"]) and not excluded("gen/x.py", False, ["src/gen/*"])
    assert not excluded("keep.log", False, ["*.log", "!keep.log"])
    root = _project(tmp_path)
    assert pack(str(root), [], "working_dir") == pack(str(root), [], "working_dir")  # same content, same bytes


def _registry_reachable() -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", "/tmp/ember-rtenv-probe", SMALL_PACKAGE],
        capture_output=True,
        timeout=120,
    )
    return probe.returncode == 0


def test_pip_env_installs_in_a_venv_and_is_reused(cluster):
    if not _registry_reachable():
        pytest.skip(f"the package registry is not reachable from this machine ({SMALL_PACKAGE} cannot be downloaded)")

    @ember.remote(runtime_env={"pip": [SMALL_PACKAGE]})
    def where():
        import termcolor

        return termcolor.__file__, sys.prefix, os.getpid()

    path, prefix, pid = ember.get(where.remote(), timeout=600)
    assert path.startswith(prefix) and prefix != sys.prefix
    second = ember.get(where.remote())
    assert second[1] == prefix  # the same venv


def test_pip_spec_that_does_not_resolve_fails_once_with_pips_message(cluster):
    @ember.remote(runtime_env={"pip": ["ember-no-such-package-xyz==0.0.1"]}, max_retries=3)
    def never():
        return 1

    with pytest.raises(RuntimeEnvSetupError, match="ember-no-such-package-xyz"):
        ember.get(never.remote(), timeout=600)
    # The node remembers the failure: the next task fails at once, without running pip again.
    with pytest.raises(RuntimeEnvSetupError, match="ember-no-such-package-xyz"):
        ember.get(never.remote(), timeout=30)

    @ember.remote(runtime_env={"pip": ["ember-no-such-package-xyz==0.0.1"]})
    class Never:
        def ping(self):
            return 1

    with pytest.raises(ember.exceptions.ActorDiedError, match="ember-no-such-package-xyz"):
        ember.get(Never.remote().ping.remote(), timeout=60)


def _version_and_start(module_name: str):
    import importlib

    module = importlib.import_module(module_name)
    # Only a worker forked from the node manager has the node manager's module loaded.
    forked = "ember.runtime.node.node_manager" in sys.modules
    return module.__version__, module.__file__, sys.prefix, forked


def test_pip_env_worker_is_forked_and_sees_the_venvs_version(cluster):
    import six

    if not _registry_reachable():
        pytest.skip("the package registry is not reachable from this machine")
    assert six.__version__ != "1.16.0"  # the node's own six: the venv's must win over it
    probe = ember.remote(_version_and_start)
    version, path, prefix, forked = ember.get(
        probe.options(runtime_env={"pip": ["six==1.16.0"]}).remote("six"), timeout=600
    )
    assert (version, forked) == ("1.16.0", True)
    assert path.startswith(prefix) and prefix != sys.prefix
    assert ember.get(probe.remote("six"))[0] == six.__version__  # plain workers keep the node's


def test_pip_env_of_a_package_the_node_imported_execs_its_python(cluster):
    import cloudpickle

    if not _registry_reachable():
        pytest.skip("the package registry is not reachable from this machine")
    assert cloudpickle.__version__ != "3.0.0"
    probe = ember.remote(_version_and_start)
    # The node manager has imported cloudpickle: a fork would keep its version, so the worker is exec'd.
    version, path, prefix, forked = ember.get(
        probe.options(runtime_env={"pip": ["cloudpickle==3.0.0"]}).remote("cloudpickle"), timeout=600
    )
    assert (version, forked) == ("3.0.0", False)
    assert path.startswith(prefix) and prefix != sys.prefix


def test_venv_fork_decisions(tmp_path):
    from ember.runtime.node.venv_fork import VenvForks, conflicts, top_level_names

    entries = ["six.py", "yaml", "_yaml.cpython-312-x86_64-linux-gnu.so", "six-1.16.0.dist-info", "__pycache__"]
    entries += ["_ember_node_site.pth", "distutils-precedence.pth"]
    assert top_level_names(entries) == {"six", "yaml", "_yaml"}
    assert conflicts({"six", "yaml"}, {"yaml": object(), "os": object()}) == ["yaml"]
    forks = VenvForks()
    for name, module in [("fine", "ember_fork_probe_mod.py"), ("clash", "os.py")]:  # the node has imported os
        site_packages = tmp_path / name / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        site_packages.mkdir(parents=True)
        (site_packages / module).write_text("")
    assert forks.plan(str(tmp_path / "fine" / "bin" / "python")) == [str(site_packages).replace("clash", "fine")]
    assert forks.plan(str(tmp_path / "clash" / "bin" / "python")) is None
