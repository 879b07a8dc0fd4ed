"""``python -m bench``: the intents benchmark (see :mod:`bench.intents`)."""

import sys

from bench.intents import main

sys.exit(main())
