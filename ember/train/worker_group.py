"""The worker group: ``num_workers`` actors in one placement group, ranked so that workers on the
same node have consecutive ranks (as Ray's), and torn down together."""

import importlib
import inspect
import os
import socket
import sys
import threading
import warnings

import ember
from ember.train import session as sess

READY_WARNING_S = 30.0  # a group not placed by then is waiting for busy resources: say so once


_warming: threading.Thread | None = None


def _warm(modules: tuple) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - only a head start: the loop's own import reports the problem
            return


def _warmed() -> None:
    """Wait for the warm-up imports: two threads importing the same package at once can see each
    other's half-initialised modules, so nothing else imports until they are done."""
    global _warming
    if _warming is not None:
        _warming.join()
        _warming = None


class TrainWorker:
    """The actor each training worker runs in. ``warm``: modules it starts importing at once, in a
    thread, while the driver is still placing the group (torch's import is most of a worker's
    start-up); every method but ``info`` and ``free_port`` waits for them."""

    def __init__(self, warm: tuple = ()):
        global _warming
        if warm:
            _warming = threading.Thread(target=_warm, args=(tuple(warm),), name="ember-train-warm", daemon=True)
            _warming.start()

    def info(self) -> dict:
        node_id = ember.get_runtime_context().get_node_id()
        address = next((n["NodeManagerAddress"] for n in ember.nodes() if n["NodeID"] == node_id), "127.0.0.1")
        return {"node_id": node_id, "address": address, "pid": os.getpid(), "gpu_ids": ember.get_gpu_ids()}

    def free_port(self) -> int:
        with socket.socket() as probe:
            probe.bind(("", 0))
            return probe.getsockname()[1]

    def execute(self, fn, *args, **kwargs):
        _warmed()
        return fn(*args, **kwargs)

    def run(self, train_fn, config, new_session):
        """Run the training loop in a thread of its own and stream its reports as they come; an
        exception in the loop ends the stream with that exception."""
        _warmed()
        sess.start(new_session)
        events = new_session.events

        def loop():
            try:
                if config is None and not _takes_an_argument(train_fn):
                    train_fn()
                else:
                    train_fn(config if config is not None else {})
                events.put((sess.DONE, None))
            except BaseException as error:  # noqa: BLE001 - the driver decides what a failure means
                events.put((sess.DONE, error))

        thread = threading.Thread(target=loop, name="ember-train-loop", daemon=True)
        thread.start()
        try:
            while True:
                event = events.get()
                if event[0] == sess.DONE:
                    if event[1] is not None:
                        raise event[1]
                    return
                yield event
        finally:
            sess.stop()


def _takes_an_argument(fn) -> bool:
    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return True


def check_fits(bundles: list, strategy: str, nodes: list) -> None:
    """Raise ValueError when the cluster could never hold ``bundles``, whatever else ran on it."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    for bundle in bundles[:1]:
        if not any(all(total.get(k, 0) >= v for k, v in bundle.items()) for total in alive):
            raise ValueError(
                f"A training worker needs {bundle}, but no node of the cluster has that much "
                f"(nodes have {[{k: total.get(k, 0) for k in bundle} for total in alive]}). "
                "Lower ScalingConfig.resources_per_worker or use_gpu."
            )
    totals: dict = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            totals[name] = totals.get(name, 0) + amount
    if strategy == "STRICT_PACK":
        fits = any(all(t.get(k, 0) >= v for k, v in totals.items()) for t in alive)
    elif strategy == "STRICT_SPREAD":
        fits = len([t for t in alive if all(t.get(k, 0) >= v for k, v in bundles[0].items())]) >= len(bundles)
    else:
        fits = all(sum(t.get(name, 0) for t in alive) >= amount for name, amount in totals.items())
    if not fits:
        have = {name: sum(t.get(name, 0) for t in alive) for name in totals}
        raise ValueError(
            f"ScalingConfig asks for {len(bundles)} workers of {bundles[0]} ({strategy}): {totals} in all, "
            f"but the whole cluster has {have} across {len(alive)} node(s). Lower num_workers or "
            "resources_per_worker, or add nodes."
        )


def place(infos: list) -> list:
    """Ranks for workers whose ``infos`` (in creation order) say where they run: workers on the
    same node get consecutive ranks, nodes in order of first appearance. Returns, per worker in
    creation order, its ``WorkerPlace``."""
    nodes: list = []
    for info in infos:
        if info["node_id"] not in nodes:
            nodes.append(info["node_id"])
    order = sorted(range(len(infos)), key=lambda i: (nodes.index(infos[i]["node_id"]), i))
    places: list = [None] * len(infos)
    for rank, i in enumerate(order):
        node = infos[i]["node_id"]
        same = [j for j in order if infos[j]["node_id"] == node]
        places[i] = sess.WorkerPlace(
            world_rank=rank,
            world_size=len(infos),
            local_rank=same.index(i),
            local_world_size=len(same),
            node_rank=nodes.index(node),
            node_id=node,
        )
    return places


class WorkerGroup:
    """Starts the actors in a placement group; ``workers`` is then in rank order, with ``infos``
    and ``places`` beside it. ``shutdown`` kills them and removes the group."""

    def __init__(self, scaling_config, name: str = "train", warm: tuple = (), actor_class=TrainWorker):
        self.scaling = scaling_config
        self.actor_class = actor_class  # a TrainWorker subclass (ember.rllib's learners add their methods)
        self.name = name
        self.warm = tuple(warm)
        self.pg = None
        self.workers: list = []
        self.infos: list = []
        self.places: list = []

    def start(self) -> None:
        from ember.util import placement_group
        from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        resources = self.scaling.worker_resources()
        bundles = [dict(resources) for _ in range(self.scaling.num_workers)]
        strategy = self.scaling.placement_strategy
        check_fits(bundles, strategy, ember.nodes())
        self.pg = placement_group(bundles, strategy=strategy)
        ready = self.pg.ready()
        done, _ = ember.wait([ready], timeout=READY_WARNING_S)
        if not done:
            warnings.warn(
                f"The training workers' resources ({bundles[0]} x {len(bundles)}) are not free yet: waiting for "
                "other tasks and actors to release them.",
                stacklevel=3,
            )
        ember.get(ready)
        actor_cls = ember.remote(self.actor_class)
        options = {"num_cpus": resources.get("CPU", 0), "num_gpus": resources.get("GPU", 0), "max_restarts": 0}
        extra = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
        if extra:
            options["resources"] = extra
        created = [
            actor_cls.options(
                **options,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote(self.warm)
            for i in range(len(bundles))
        ]
        self.workers = created  # so that shutdown kills them even if info() fails
        infos = ember.get([worker.info.remote() for worker in created])
        places = place(infos)
        order = sorted(range(len(created)), key=lambda i: places[i].world_rank)
        self.workers = [created[i] for i in order]
        self.infos = [infos[i] for i in order]
        self.places = [places[i] for i in order]

    def execute(self, fn, *args) -> list:
        """Run ``fn(*args)`` on every worker at once; their results in rank order."""
        return ember.get([worker.execute.remote(fn, *args) for worker in self.workers])

    def shutdown(self) -> None:
        from ember.util import remove_placement_group

        for worker in self.workers:
            try:
                ember.kill(worker)
            except Exception as error:  # a worker already gone is fine; anything else is worth a line
                print(f"ember.train: could not kill a worker: {error}", file=sys.stderr)
        self.workers = []
        if self.pg is not None:
            try:
                remove_placement_group(self.pg)
            except Exception as error:
                print(f"ember.train: could not remove the placement group: {error}", file=sys.stderr)
            self.pg = None
