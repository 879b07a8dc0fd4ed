"""``python -m bench``: the intents benchmark (see :mod:`bench.intents`)."""

import sys

from sendonce.bench.intents import main

sys.exit(main())
