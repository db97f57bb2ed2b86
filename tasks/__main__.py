"""`python -m tasks` is the `clipmill` command."""

import sys

from tasks.cli import main

sys.exit(main())
