"""`python -m volagent` runs the command line."""

from volagent.cli import main

raise SystemExit(main())
