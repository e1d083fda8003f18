"""Lineage figures: one script per figure, built and cached by :mod:`figures.builder`.

Importing this package imports nothing, so that the figure cache key of a script only
covers the modules it really uses. See CONTRIBUTING.md ("Figures") for the script contract.
"""
