"""Scheduling strategies for ``.options(scheduling_strategy=...)``, with Ray's names and attributes.

Besides these classes, ``scheduling_strategy`` takes Ray's strings ``"DEFAULT"`` and ``"SPREAD"``.
"""


class PlacementGroupSchedulingStrategy:
    """Run a task or actor in a bundle of ``placement_group``: bundle number
    ``placement_group_bundle_index``, or any bundle with -1. With
    ``placement_group_capture_child_tasks`` the tasks it submits run in the group too."""

    def __init__(
        self,
        placement_group,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ):
        from ember.util.placement_group import PlacementGroup, check_placement_group_index

        if not isinstance(placement_group, PlacementGroup):
            raise TypeError(
                f"PlacementGroupSchedulingStrategy expects a PlacementGroup, got {type(placement_group).__name__}."
            )
        if isinstance(placement_group_bundle_index, bool) or not isinstance(placement_group_bundle_index, int):
            raise TypeError(f"placement_group_bundle_index must be an int, got {placement_group_bundle_index!r}.")
        check_placement_group_index(placement_group, placement_group_bundle_index)
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self):
        return (
            f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
            f"bundle_index={self.placement_group_bundle_index}, "
            f"capture_child_tasks={self.placement_group_capture_child_tasks})"
        )


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (its hex id, as ``ember.get_runtime_context().get_node_id()``
    gives). With ``soft=True`` another node is used when that one is dead or cannot run it."""

    def __init__(
        self, node_id: str, soft: bool, _spill_on_unavailable: bool = False, _fail_on_unavailable: bool = False
    ):
        if not isinstance(node_id, str):
            raise TypeError(f"NodeAffinitySchedulingStrategy expects the node id as a hex string, got {node_id!r}.")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self):
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"
