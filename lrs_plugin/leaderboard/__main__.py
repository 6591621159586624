"""``python -m lrs_plugin.leaderboard SUBCOMMAND ...``, the same as ``lrs-plugin leaderboard ...``."""

import sys

from lrs_plugin.leaderboard.submit import main

sys.exit(main())
