"""``python -m jobs.cli``: the ``lockstep`` command."""

import sys

from jobs.cli import main

sys.exit(main())
