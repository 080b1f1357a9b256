"""Suite-wide settings."""

import os

# every timing report any test makes (in-process or in a subprocess) is checked against
# the chip's physical rates: no op row, engine row or total may exceed one
os.environ["MAIAC_CHECK_RATES"] = "1"
