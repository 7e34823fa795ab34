"""The operator's commands beside the daemon."""
