"""``python -m sendonce.cli``: the same as the ``sendonce`` console script."""

import sys

from sendonce.cli.main import main

sys.exit(main())
