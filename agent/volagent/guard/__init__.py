"""The start guard: Docker's authorization plugin judging creates and starts."""
