"""Suite-wide settings."""

import os

# every timing report any test makes (in-process or in a subprocess) is checked against
# the chip's physical rates: no op row, engine row or total may exceed one
os.environ["MAIAC_CHECK_RATES"] = "1"


def pytest_configure(config):
    """``slow``: minutes on 2 cores; still in the default selection (``-m 'not slow'``
    leaves them out)."""
    config.addinivalue_line("markers", "slow: takes minutes on a 2-core machine")
