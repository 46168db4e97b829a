"""The worker process: runs tasks and actor calls sent by their owners."""
