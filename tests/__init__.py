"""volagent's test suite: unit tests and integration tests against real parts."""
