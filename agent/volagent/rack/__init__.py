"""The rack's shared records on the shared filesystem: heartbeats, usage, binds, the trash."""
