"""Integration tests: a private Docker engine, real mounts, the agent as a real process."""
