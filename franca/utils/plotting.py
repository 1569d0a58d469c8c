"""matplotlib for the project's figures, headless: every figure is written to a file, never shown, so pyplot
runs on the Agg backend wherever it is drawn (no display needed, the same pixels on every machine)."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """`matplotlib.pyplot` on the Agg backend. matplotlib is imported here, when a figure is first drawn,
    so that the rest of the project does not pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
