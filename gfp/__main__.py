"""``python -m gfp``: the command line (see :mod:`gfp.cli`)."""

from gfp.cli import main

raise SystemExit(main())
