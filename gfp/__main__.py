"""``python -m gfp``: the command line (see :mod:`gfp.cli`)."""

import sys

try:
    from gfp.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch and the rest import: no traceback
    print("gfp: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
