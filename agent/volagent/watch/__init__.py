"""The Docker watch: Docker's event stream, read to prepare what the guard did not."""
