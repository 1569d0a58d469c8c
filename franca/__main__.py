"""`python -m franca …` (also what `torchrun -m franca pretrain …` runs)."""

from __future__ import annotations

import sys

from franca.cli import main

sys.exit(main())
