"""Child processes that must not import franca (the printed timm recipes, the transformers folders): a script
starting with `no_franca_preamble(what)` fails with an ImportError naming `what` if anything imports franca."""

from __future__ import annotations


def no_franca_preamble(what: str) -> str:
    """Python source that, run first in a child process, makes any import of franca an ImportError."""
    return f"""
import sys
class _NoFranca:  # this process must never import franca
    def find_spec(self, name, path=None, target=None):
        if name == "franca" or name.startswith("franca."):
            raise ImportError("franca imported by {what}")
sys.meta_path.insert(0, _NoFranca())
"""
