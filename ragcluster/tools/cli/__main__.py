"""``python -m ragcluster.tools.cli``: the same as the ``ragcluster`` command."""

import sys

from ragcluster.tools.cli import main

sys.exit(main())
