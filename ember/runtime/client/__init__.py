"""The core client used by drivers and workers: ownership, references, task and actor-call submission."""
