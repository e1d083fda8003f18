"""Lineage reference implementations: one module per paper, shared pieces imported.

Importing ``refimpl`` imports nothing else on purpose: the figure cache hashes the
modules a figure imports, so a module only pulls in what it really uses.
"""

__version__ = "0.1.0"
