"""Identifiers for jobs, nodes, workers, actors, tasks and objects.

Ids are random bytes; an object returned by a task derives its id from the task id and the return
index, so the owner can name a task's outputs before the task runs (as Ray does).
"""

import os

TASK_ID_SIZE = 14


def new_id(size: int = 16) -> bytes:
    return os.urandom(size)


def new_task_id() -> bytes:
    return os.urandom(TASK_ID_SIZE)


def return_object_id(task_id: bytes, index: int) -> bytes:
    """The id of a task's return value number ``index`` (0-based)."""
    return task_id + index.to_bytes(2, "little")


def put_object_id() -> bytes:
    # A put is a zero-argument "task" of its own, so put ids share the return-id layout.
    return return_object_id(new_task_id(), 0xFFFF)


def task_id_of(object_id: bytes) -> bytes:
    return object_id[:TASK_ID_SIZE]
