"""`python -m gischat` runs the same as the `gischat` command."""

from gischat.cli import main

raise SystemExit(main())
