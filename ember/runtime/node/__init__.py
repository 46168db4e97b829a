"""The node manager's service: worker pool, lease scheduling, the shared-memory store and object transfer."""
