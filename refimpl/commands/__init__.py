"""The command line of each paper (``python -m refimpl PAPER COMMAND``), one module per paper.

Argument parsing, printing and picture writing live here, outside the paper modules, so that editing a
command changes no figure's and no trained model's cache key (figures import the paper modules only).
"""
