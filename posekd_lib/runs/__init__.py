"""Runs: the config files and their runner (``runconfig``), the shipped long-budget reference runs
(``reference``) and the results table of every run (``table``). The command line is
``python -m posekd_lib.run``."""
