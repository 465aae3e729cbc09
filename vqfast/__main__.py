"""``python -m vqfast``: the same command line as ``vqfast`` (also what torchrun runs: ``torchrun -m vqfast``)."""

import sys

from vqfast.cli import main

sys.exit(main())
