"""``%ember`` and ``%%remote``: the magics registered by ``%load_ext ember``."""

import json
import shlex

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

import ember
from ember.kernel_ext.remote_cell import CellProgram, RemoteCellError, run_cell
from ember.runtime.task_context import output_tag

LINES_TIMEOUT = 10.0  # how long a finished cell waits for its last output lines to arrive

_run_cell_remote = None


def _remote_function():
    global _run_cell_remote
    if _run_cell_remote is None:
        _run_cell_remote = ember.remote(run_cell)
    return _run_cell_remote


@magics_class
class EmberMagics(Magics):
    """``%ember status|widgets|dashboard|connect ADDRESS|shutdown`` and the ``%%remote`` cell magic."""

    def __init__(self, shell, extension):
        super().__init__(shell)
        self.extension = extension

    # --- %ember -----------------------------------------------------------------------------------------
    @line_magic
    def ember(self, line: str):
        """``%ember status | widgets | dashboard | connect ADDRESS | shutdown``."""
        words = shlex.split(line)
        command, rest = (words[0], words[1:]) if words else ("status", [])
        if command == "status":
            return self._status()
        if command == "connect":
            if len(rest) != 1:
                raise ValueError("usage: %ember connect HOST:PORT")
            self.extension.connect(rest[0])
            print(f"Ember connected to {self.extension.address}")
            return None
        if command == "shutdown":
            self.extension.disconnect()
            print("Ember shut down in this kernel (%ember connect ADDRESS or %reload_ext ember to start again)")
            return None
        if command in ("widgets", "dashboard"):
            self._require_connection()
            from ember import widgets

            display(widgets.Dashboard() if command == "dashboard" else widgets.all_widgets())
            return None
        raise ValueError(f"unknown %ember command {command!r}: use status, widgets, dashboard, connect or shutdown")

    def _require_connection(self):
        if not ember.is_initialized():
            raise RuntimeError("Ember is not connected in this kernel: run %ember connect ADDRESS or %reload_ext ember")

    def _status(self):
        from ember.widgets.status import status_text

        self._require_connection()
        print(status_text(self.extension.address, self.extension.owns_connection))

    # --- %%remote ---------------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--num-cpus", type=float, default=None, help="CPUs the cell's task holds (default 1)")
    @argument("--num-gpus", type=float, default=None, help="GPUs the cell's task holds")
    @argument("--resources", default=None, help="custom resources as JSON, e.g. '{\"custom\": 1}'")
    @argument("--node", default=None, help="run on this node (a node id or a unique prefix of one)")
    @argument("--all-nodes", action="store_true", help="run once on every live node; output grouped by node")
    @argument("--name", default=None, help="bind the result (or, with --no-block, the ObjectRef) to this name")
    @argument("--no-block", action="store_true", help="return at once; the ObjectRef goes to --name")
    @cell_magic
    def remote(self, line: str, cell: str):
        """Run the cell's body on the cluster as a task.

        The notebook variables it reads travel with it; its prints stream into this cell; the value
        of its last expression is the cell's result; the names it assigns come back into the notebook.
        """
        # shlex, not IPython's splitter: it keeps quotes, and --resources '{"custom": 1}' needs them gone.
        args = self.remote.parser.parse_args(shlex.split(line))
        self._require_connection()
        options = {}
        if args.num_cpus is not None:
            options["num_cpus"] = args.num_cpus
        if args.num_gpus is not None:
            options["num_gpus"] = args.num_gpus
        if args.resources:
            try:
                options["resources"] = json.loads(args.resources)
            except json.JSONDecodeError as error:
                raise ValueError(f"--resources must be a JSON object: {error}") from None
            if not isinstance(options["resources"], dict):
                raise ValueError("--resources must be a JSON object, e.g. '{\"custom\": 1}'")
        if args.node and args.all_nodes:
            raise ValueError("--node and --all-nodes cannot be used together")
        if args.no_block and args.all_nodes:
            raise ValueError("--no-block and --all-nodes cannot be used together")
        count = self.shell.displayhook.prompt_count
        program = CellProgram(cell, filename=f"<remote cell In[{count}]>", first_line=2)
        payload = program.payload(self.shell.user_ns)
        name = f"%%remote In[{count}]"
        cell_tag = output_tag.get()
        if args.all_nodes:
            return self._run_everywhere(payload, name, options, cell_tag, args.name)
        if args.node:
            options.update(node_options(find_node(args.node)))
        function = _remote_function().options(name=name, **options)
        tag = self.extension.router.remote_tag(cell_tag)
        token = output_tag.set(tag)
        try:
            ref = function.remote(payload, not args.no_block)
        finally:
            output_tag.reset(token)
        if args.no_block:
            if args.name:
                self.shell.user_ns[args.name] = ref
                return None
            return ref
        try:
            result = ember.get(ref)
        except KeyboardInterrupt:
            ember.cancel(ref, force=True)
            raise
        self.extension.router.wait_delivered(tag, result["lines"], LINES_TIMEOUT)
        if "error" in result:
            raise RemoteCellError(*result["error"])
        names = _loads(result["names"])
        self.shell.user_ns.update(names)
        if result["skipped"]:
            print(f"Not brought back (cannot be pickled): {', '.join(result['skipped'])}")
        if args.name:
            self.shell.user_ns[args.name] = result["value"]
        return result["value"]

    def _run_everywhere(self, payload: bytes, name: str, options: dict, cell_tag, bind: str | None):
        """``--all-nodes``: one task per live node; each node's output printed as one block when it ends."""
        router = self.extension.router
        runs = {}
        for index, node in enumerate(n for n in ember.nodes() if n["Alive"]):
            node_id = node["NodeID"]
            tag = router.remote_tag(cell_tag, group_label=f"node{index} {node_id[:8]}")
            token = output_tag.set(tag)
            try:
                ref = _remote_function().options(name=name, **options, **node_options(node_id)).remote(payload, True)
            finally:
                output_tag.reset(token)
            runs[ref] = (node_id, tag)
        results, errors, pending = {}, [], list(runs)
        while pending:
            ready, pending = ember.wait(pending, num_returns=1)
            for ref in ready:
                node_id, tag = runs[ref]
                result = ember.get(ref)
                router.wait_delivered(tag, result["lines"], LINES_TIMEOUT)
                router.flush_group(tag)
                if "error" in result:
                    errors.append((node_id, result["error"]))
                else:
                    results[node_id] = result["value"]
        if errors:
            node_id, (ename, evalue, lines) = errors[0]
            more = [f"(and {len(errors) - 1} more node(s) failed)"] if len(errors) > 1 else []
            raise RemoteCellError(ename, evalue, lines + more, node=node_id[:8])
        if bind:
            self.shell.user_ns[bind] = results
        return results


def _loads(data: bytes) -> dict:
    import cloudpickle

    return cloudpickle.loads(data)


def find_node(prefix: str) -> str:
    """The live node whose id is ``prefix`` or starts with it; a clear error when none or several match."""
    matches = [n["NodeID"] for n in ember.nodes() if n["Alive"] and n["NodeID"].startswith(prefix.lower())]
    if len(matches) != 1:
        live = ", ".join(n["NodeID"][:12] for n in ember.nodes() if n["Alive"])
        what = "no live node" if not matches else f"{len(matches)} nodes"
        raise ValueError(f"--node {prefix!r} matches {what}; live nodes: {live}")
    return matches[0]


def node_options(node_id: str) -> dict:
    """Options that pin a task to ``node_id`` (hard node affinity, as Ray's NodeAffinitySchedulingStrategy)."""
    try:
        from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        # Before multi-node scheduling exists there is one node, and every task already runs on it.
        if len([n for n in ember.nodes() if n["Alive"]]) > 1:
            raise RuntimeError("this Ember build cannot pin a task to a node (no node affinity)") from None
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}
