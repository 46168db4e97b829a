"""The head's service: node table and heartbeats, actors, placement groups, jobs, KV, the event hub."""
