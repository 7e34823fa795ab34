"""The daemon: its lifecycle and root tasks, the systemd protocol, who may use its socket."""
