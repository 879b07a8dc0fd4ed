"""Suite-wide test settings.

Hypothesis' per-example deadline (200 ms) measures the machine as much as the code:
on a loaded 2-core CI runner a codec round trip has exceeded it and failed a test
that is about correctness, not speed. Speed is measured in ``bench/``, so the
deadline is off; ``max_examples`` and the rest stay Hypothesis' defaults.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("sendonce", deadline=None)
settings.load_profile("sendonce")
