"""``python -m bench``: the command line."""

from bench.cli.main import main

raise SystemExit(main())
