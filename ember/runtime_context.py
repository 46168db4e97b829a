"""``ember.get_runtime_context()``: who and where the caller is, as Ray's RuntimeContext."""

from ember.connection import connected_client
from ember.runtime.task_context import current_task


class RuntimeContext:
    """Ids and assigned resources of the current driver, task or actor."""

    def __init__(self, client):
        self._client = client
        self._task = current_task.get()

    def get_job_id(self) -> str:
        job = (self._task.job_id if self._task else None) or self._client.job_id
        return job.hex() if job else ""

    def get_node_id(self) -> str:
        return self._client.node_id.hex()

    def get_worker_id(self) -> str:
        return self._client.client_id.hex()

    def get_task_id(self) -> str | None:
        return self._task.task_id.hex() if self._task and self._task.task_id else None

    def get_actor_id(self) -> str | None:
        return self._task.actor_id.hex() if self._task and self._task.actor_id else None

    def get_task_name(self) -> str | None:
        return self._task.name if self._task else None

    def get_assigned_resources(self) -> dict:
        """Resources held by the current task or actor (empty on the driver)."""
        return dict(self._task.assigned) if self._task else {}

    def get_accelerator_ids(self) -> dict:
        return {"GPU": [str(i) for i in (self._task.gpu_ids if self._task else [])]}

    @property
    def current_actor(self):
        """A handle to the actor this code runs in (inside an actor method or constructor)."""
        if self._task is None or self._task.actor_info is None:
            raise RuntimeError("current_actor is only available inside an actor.")
        from ember.actor import ActorHandle

        return ActorHandle(*self._task.actor_info)

    @property
    def namespace(self) -> str:
        return self._client.current_namespace()

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def task_id(self):
        return self.get_task_id()

    @property
    def actor_id(self):
        return self.get_actor_id()

    @property
    def worker_id(self) -> str:
        return self.get_worker_id()

    @property
    def gcs_address(self) -> str:
        return self._client.head_address

    def get(self) -> dict:
        return {
            "job_id": self.get_job_id(),
            "node_id": self.get_node_id(),
            "task_id": self.get_task_id(),
            "actor_id": self.get_actor_id(),
            "namespace": self.namespace,
        }


def get_runtime_context() -> RuntimeContext:
    """The runtime context of the caller (driver, task or actor)."""
    return RuntimeContext(connected_client())


def get_gpu_ids() -> list:
    """The GPU ids assigned to the current task or actor (empty on the driver)."""
    task = current_task.get()
    return list(task.gpu_ids) if task else []
