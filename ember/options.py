"""Validation of ``@remote`` and ``.options()`` arguments, and their translation into resources.

Ray's rules apply: tasks need 1 CPU by default; actors need 1 CPU to be placed and hold none while
they run, unless ``num_cpus`` is given; fractional amounts are allowed; ``resources`` may not name
CPU or GPU (those have their own keywords).
"""

import numbers

from ember.runtime.runtime_env import check_runtime_env

COMMON = {
    "num_cpus",
    "num_gpus",
    "resources",
    "memory",
    "runtime_env",
    "name",
    "scheduling_strategy",
    "accelerator_type",
    "placement_group",
    "placement_group_bundle_index",
    "placement_group_capture_child_tasks",
    "label_selector",
    "_metadata",
}
TASK_OPTIONS = COMMON | {"num_returns", "max_retries", "retry_exceptions", "max_calls", "enable_task_events"}
ACTOR_OPTIONS = COMMON | {
    "namespace",
    "lifetime",
    "get_if_exists",
    "max_restarts",
    "max_task_retries",
    "max_concurrency",
    "max_pending_calls",
    "concurrency_groups",
}
METHOD_OPTIONS = {
    "num_returns",
    "name",
    "max_task_retries",
    "retry_exceptions",
    "concurrency_group",
    "enable_task_events",
    "tensor_transport",
}
# Where tensors returned by a method travel. Ember moves every value through its object store; Ray's
# GPU-to-GPU transports (NCCL, Gloo collectives) have no counterpart here.
TENSOR_TRANSPORTS = ("object_store",)


def validate(options: dict, allowed: set, what: str) -> dict:
    """Check option names and values; raise ValueError/TypeError naming the bad one."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"Invalid option(s) {', '.join(map(repr, unknown))} for {what}. "
            f"Valid options are: {', '.join(sorted(k for k in allowed if not k.startswith('_')))}."
        )
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{key} must be a non-negative number, got {value!r}.")
    num_gpus = options.get("num_gpus")
    if num_gpus is not None and num_gpus > 1 and num_gpus != int(num_gpus):
        raise ValueError(f"num_gpus above 1 must be a whole number, got {num_gpus}.")
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict of name to amount, got {type(resources).__name__}.")
        for name, amount in resources.items():
            if name in ("CPU", "GPU"):
                raise ValueError(f"Use num_cpus/num_gpus instead of resources={{'{name}': ...}}.")
            if not isinstance(amount, numbers.Real) or isinstance(amount, bool) or amount < 0:
                raise ValueError(f"Resource {name!r} must be a non-negative number, got {amount!r}.")
            if amount > 1 and amount != int(amount):
                raise ValueError(f"Resource {name!r}: amounts above 1 must be whole numbers, got {amount}.")
    num_returns = options.get("num_returns")
    if (
        num_returns is not None
        and num_returns not in ("streaming", "dynamic")
        and (not isinstance(num_returns, int) or isinstance(num_returns, bool) or num_returns < 0)
    ):
        raise ValueError(f"num_returns must be a non-negative int, 'streaming' or 'dynamic', got {num_returns!r}.")
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or value < -1):
            raise ValueError(f"{key} must be an int >= -1 (-1 means infinite), got {value!r}.")
    for key in ("max_calls", "max_concurrency"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or value < (1 if key == "max_concurrency" else 0)):
            raise ValueError(f"{key} must be a positive int, got {value!r}.")
    _check_method_options(options)
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or 'non_detached', got {lifetime!r}.")
    runtime_env = options.get("runtime_env")
    if runtime_env is not None:
        check_runtime_env(runtime_env)
    return options


def _check_method_options(options: dict) -> None:
    group = options.get("concurrency_group")
    if group is not None and (not isinstance(group, str) or not group):
        raise ValueError(f"concurrency_group must be a non-empty string, got {group!r}.")
    groups = options.get("concurrency_groups")
    if groups is not None:
        if not isinstance(groups, dict):
            raise TypeError(f"concurrency_groups must be a dict of group name to max concurrency, got {groups!r}.")
        for name, limit in groups.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"A concurrency group's name must be a non-empty string, got {name!r}.")
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ValueError(f"Concurrency group {name!r}: max concurrency must be a positive int, got {limit!r}.")
    if "enable_task_events" in options and not isinstance(options["enable_task_events"], bool):
        raise TypeError(f"enable_task_events must be True or False, got {options['enable_task_events']!r}.")
    retry = options.get("retry_exceptions")
    if retry is not None and not isinstance(retry, bool):
        if not isinstance(retry, (list, tuple)) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry
        ):
            raise TypeError(f"retry_exceptions must be a bool or a list of exception types, got {retry!r}.")
    transport = options.get("tensor_transport")
    if transport is not None and (not isinstance(transport, str) or transport.lower() not in TENSOR_TRANSPORTS):
        raise ValueError(
            f"tensor_transport={transport!r} is not available: Ember has no GPU tensor transport (NCCL, Gloo); "
            "every value travels through the object store, so only tensor_transport='object_store' is accepted."
        )


def resources_of(options: dict, default_cpus: float) -> dict:
    """The resource request of a task or actor, e.g. ``{"CPU": 1, "GPU": 0.5, "custom": 2}``."""
    resources = {"CPU": options.get("num_cpus", default_cpus)}
    if options.get("num_gpus"):
        resources["GPU"] = options["num_gpus"]
    if options.get("memory"):
        resources["memory"] = options["memory"]
    if options.get("accelerator_type"):
        resources[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    resources.update(options.get("resources") or {})
    return {name: amount for name, amount in resources.items() if amount}


def scheduling_of(options: dict, resources: dict, running: dict | None = None):
    """Ray's scheduling options as (resources, running, strategy, placement group).

    ``strategy`` goes to the node managers (see ``runtime/node/cluster_scheduler.py``): None, "SPREAD",
    or a node affinity ``{"node", "soft", "spill"}``. A placement group needs no strategy: its
    bundles' resources (``CPU_group_<i>_<pg>``, ...) exist only on the nodes that hold them, so the
    request is rewritten to ask for those. ``placement group`` is ``[pg hex, bundle index, capture]``
    for tasks that run inside one, so the tasks they submit can join it (capture_child_tasks).
    """
    from ember.runtime.task_context import current_task

    strategy = options.get("scheduling_strategy")
    group = options.get("placement_group", "default")
    index = options.get("placement_group_bundle_index", -1)
    capture = options.get("placement_group_capture_child_tasks")
    if strategy is not None and hasattr(strategy, "placement_group"):
        group = strategy.placement_group
        index = strategy.placement_group_bundle_index
        capture = strategy.placement_group_capture_child_tasks
        strategy = None
    elif strategy is not None and hasattr(strategy, "node_id") and hasattr(strategy, "soft"):
        node = strategy.node_id
        if not isinstance(node, str):
            raise TypeError(f"NodeAffinitySchedulingStrategy.node_id must be a hex string, got {node!r}.")
        spill = bool(getattr(strategy, "_spill_on_unavailable", False))
        affinity = {"node": node, "soft": bool(strategy.soft), "spill": spill}
        return resources, running, affinity, None
    elif strategy == "SPREAD":
        return resources, running, "SPREAD", None
    elif strategy not in (None, "DEFAULT"):
        raise ValueError(
            f"scheduling_strategy must be 'DEFAULT', 'SPREAD', a PlacementGroupSchedulingStrategy or a "
            f"NodeAffinitySchedulingStrategy, got {strategy!r}."
        )
    if group == "default" or group is None:
        context = current_task.get()
        inherited = getattr(context, "placement_group", None)
        if strategy is None and "placement_group" not in options and inherited and inherited[2]:
            group_hex, index, capture = inherited[0], -1, True
        else:
            return resources, running, None, None
    else:
        group_hex = group.id.hex()
        count = getattr(group, "bundle_count", None)
        if not isinstance(index, int) or index < -1 or (count is not None and index >= count):
            raise ValueError(f"placement_group_bundle_index must be -1 or a bundle index below {count}, got {index!r}.")
    placement = [group_hex, index, bool(capture)]
    return _in_bundle(resources, group_hex, index), _in_bundle(running, group_hex, index), None, placement


def _in_bundle(resources: dict | None, group_hex: str, index: int) -> dict | None:
    if resources is None:
        return None
    # The wildcard names count against the group as a whole, the indexed ones against one bundle;
    # the tiny bundle_group amount places even a task that asks for nothing inside the group.
    wanted = {f"bundle_group_{group_hex}": 0.001}
    for name, amount in resources.items():
        wanted[f"{name}_group_{group_hex}"] = amount
    if index >= 0:
        wanted[f"bundle_group_{index}_{group_hex}"] = 0.001
        for name, amount in resources.items():
            wanted[f"{name}_group_{index}_{group_hex}"] = amount
    return wanted
