"""Run a notebook cell's body on the cluster: what ``%%remote`` sends, runs and brings back.

The cell is the user's own code, so the worker compiles and executes it (never ``eval`` of anything
else). Three things make it feel like a local cell:

- the notebook variables the cell reads travel with it (only those, found from the cell's syntax tree);
- the value of its last expression comes back as the cell's result, and the names it assigns at
  top level come back into the notebook namespace;
- its line numbers are the cell's own: the body is compiled with its line numbers shifted past the
  magic's line, and its source is registered in the worker's ``linecache``, so a traceback points
  at the line the user sees, with the text of that line.
"""

import ast
import builtins
import linecache
import sys
import traceback

import cloudpickle

CELL_MODULE = "__ember_cell__"  # not importable: functions the cell defines are pickled by value
RESULT_NAME = "__ember_cell_result__"


class RemoteCellError(Exception):
    """An exception raised by a ``%%remote`` cell on the cluster.

    IPython shows ``_render_traceback_`` instead of a local traceback, so the notebook shows the
    remote frames of the cell only, with the cell's own line numbers.
    """

    def __init__(self, ename: str, evalue: str, lines: list, node: str = ""):
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.lines = lines
        self.node = node

    def _render_traceback_(self) -> list:
        where = f" on node {self.node}" if self.node else ""
        return [f"Remote traceback (%%remote cell{where}):", *self.lines]


class CellProgram:
    """A cell body analysed once on the driver: what it reads, what it assigns, how it ends.

    ``first_line`` is the cell line number of the body's first line (2 when the magic line is line 1).
    """

    def __init__(self, source: str, filename: str, first_line: int = 2):
        self.source = source
        self.filename = filename
        self.first_line = first_line
        tree = ast.parse(source, filename=filename)  # a SyntaxError is reported before anything runs
        self.reads = _names_read(tree)
        self.assigns = _names_assigned(tree)
        self.ends_with_expression = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)

    def inputs(self, namespace: dict) -> dict:
        """The notebook variables the cell reads (builtins and IPython's own names excluded)."""
        found = {}
        for name in self.reads:
            if name in namespace and not name.startswith("_") and not _is_ipython_name(name):
                found[name] = namespace[name]
        return found

    def payload(self, namespace: dict) -> bytes:
        """The cell and its inputs, pickled once on the driver (cloudpickle: lambdas and classes too)."""
        return cloudpickle.dumps((self.source, self.filename, self.first_line, self.inputs(namespace)))


def _names_read(tree: ast.AST) -> set:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def _names_assigned(tree: ast.Module) -> list:
    """Names bound at the cell's top level, in order (nested function bodies keep theirs)."""
    names: list = []

    def add(name):
        if name not in names:
            names.append(name)

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                add((alias.asname or alias.name).split(".")[0])
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            add(node.id)
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return  # their targets are local to them
        for child in ast.iter_child_nodes(node):
            visit(child)

    for statement in tree.body:
        visit(statement)
    return names


def _is_ipython_name(name: str) -> bool:
    return name in {"In", "Out", "get_ipython", "exit", "quit"}


# --- on the worker ----------------------------------------------------------------------------------
def run_cell(payload: bytes, blocking: bool = True):
    """The task body of ``%%remote``: execute the cell with its inputs; return what the notebook needs.

    Blocking mode returns ``{"value", "names", "skipped"}`` or ``{"error": ...}`` so the driver can
    show a traceback of the cell's frames only. Non-blocking mode returns the last expression's value
    (or raises), so ``ember.get`` on the bound ObjectRef gives the value as for any task.
    """
    source, filename, first_line, inputs = cloudpickle.loads(payload)
    lines = source.splitlines(keepends=True)
    # Line 1 of the cell is the magic's line; linecache shows the body's lines at their cell numbers.
    padded = ["\n"] * (first_line - 1) + lines
    linecache.cache[filename] = (len("".join(padded)), None, padded, filename)
    namespace = {"__name__": CELL_MODULE, "__builtins__": builtins, **inputs}
    streams = sys.stdout, sys.stderr
    counting = _CountingStream(streams[0]), _CountingStream(streams[1])
    sys.stdout, sys.stderr = counting
    failure = None
    try:
        value = _execute(source, filename, first_line, namespace)
    except BaseException as error:
        if not blocking or isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        failure = (type(error).__name__, str(error), _cell_traceback(error, filename))
    finally:
        sys.stdout, sys.stderr = streams
        lines = sum(stream.finish() for stream in counting)
    if not blocking:
        return value
    if failure is not None:
        return {"error": failure, "lines": lines}
    names, skipped = {}, []
    for name in _assigned_here(source):
        if name in namespace:
            try:
                cloudpickle.dumps(namespace[name])
                names[name] = namespace[name]
            except Exception:
                skipped.append(name)  # e.g. an open file or a lock: stays on the worker
    return {"value": value, "names": cloudpickle.dumps(names), "skipped": skipped, "lines": lines}


class _CountingStream:
    """Wraps the worker's stdout/stderr for one cell: counts the lines it sends to the notebook.

    The driver waits until that many lines reached the cell, so a blocking ``%%remote`` cell ends
    with all of its output shown (lines travel apart from the result, through the head's hub).
    """

    def __init__(self, stream):
        self.stream = stream
        self.lines = 0
        self.partial = False

    def write(self, text: str) -> int:
        if text:
            self.lines += text.count("\n")
            self.partial = not text.endswith("\n")
        return self.stream.write(text)

    def finish(self) -> int:
        if self.partial:  # a last line without a newline would otherwise wait for the next task's
            self.write("\n")
        self.stream.flush()
        return self.lines

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _execute(source: str, filename: str, first_line: int, namespace: dict):
    tree = ast.parse(source, filename=filename)
    ast.increment_lineno(tree, first_line - 1)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        # The last expression becomes an assignment to a private name, so the whole cell runs as one
        # compiled module (the user's own code; nothing is evaluated from a string).
        last = tree.body[-1]
        target = ast.Name(RESULT_NAME, ast.Store())
        tree.body[-1] = ast.copy_location(ast.Assign([ast.copy_location(target, last)], last.value), last)
        ast.fix_missing_locations(tree)
    exec(compile(tree, filename, "exec"), namespace)
    return namespace.pop(RESULT_NAME, None)


def _assigned_here(source: str) -> list:
    return _names_assigned(ast.parse(source))


def _cell_traceback(error: BaseException, filename: str) -> list:
    """The traceback lines of the cell's own frames (and what it called), not the worker's."""
    frames = traceback.extract_tb(error.__traceback__)
    for index, frame in enumerate(frames):
        if frame.filename == filename:
            frames = frames[index:]
            break
    lines = traceback.format_list(frames)
    lines += traceback.format_exception_only(type(error), error)
    return ["".join(lines).rstrip("\n")]
