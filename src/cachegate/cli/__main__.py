"""`python -m cachegate.cli`: the `cachegate` command."""

from cachegate.cli import main

raise SystemExit(main())
