"""``python -m vqfast``: the same command line as ``vqfast`` (also what torchrun runs: ``torchrun -m vqfast``)."""

import sys

from vqfast.app.distributed import exit_worker
from vqfast.cli import main

code = main()
exit_worker(code)
sys.exit(code)
