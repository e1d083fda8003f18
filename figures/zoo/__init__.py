"""The trained-model zoo: one module per paper, holding that paper's cached() artifacts (trained models,
sample banks) — ``figures/zoo/ddpm.py`` for DDPM, ``figures/zoo/ldm.py`` for the LDM, and so on.

A zoo module imports refimpl's module of its paper and only the zoo modules of the papers it builds on
(``from figures.zoo.ldm import ldm_checkpoint``). Its source keys its artifacts: an artifact's cache key
covers the module that produces it and everything that module imports, so editing a zoo module retrains
its paper's models and those of the papers built on them, nothing else. No zoo module defines OUTPUTS.
"""
