"""Export a QAT-trained ai8x model for the MAX78000 code generator (ai8x-synthesis, "izer").

Pipeline: `lean_checkpoint` (weights-only loadable, no BN keys) -> `quantize_checkpoint`
(the integer weights, biases and output shifts izer consumes, as upstream ``quantize.py``
computes them) -> `network_yaml` (izer's network description, generated from the model) ->
`sample_input` / `expected_output` (a known-answer test) -> `izer_command` / `run_izer`.

izer runs in its own virtual environment (`build_izer_venv`, ``make izer``): ai8x-synthesis pins
numpy 1.26.4 and fails under numpy 2 (this project's), so `run_izer` uses that venv's python.

The package, one job a module: `checkpoint` (lean and quantized checkpoints), `network` (the
network YAML and the known-answer test data) and `izer` (izer's own environment and its runs).
Import from here.
"""
from .checkpoint import (
    lean_checkpoint, save_checkpoint, quantize_checkpoint,
)
from .network import (
    network_yaml, sample_input, expected_output,
)
from .izer import (
    IZER_TORCH, IZER_FIX, IzerUnavailableError, synthesis_checkout, izer_requirements,
    izer_venv_dir, build_izer_venv, izer_python, izer_command, parse_izer_log, run_izer,
)

__all__ = [
    'lean_checkpoint', 'save_checkpoint', 'quantize_checkpoint', 'network_yaml', 'sample_input',
    'expected_output', 'IZER_TORCH', 'IZER_FIX', 'IzerUnavailableError', 'synthesis_checkout',
    'izer_requirements', 'izer_venv_dir', 'build_izer_venv', 'izer_python', 'izer_command',
    'parse_izer_log', 'run_izer',
]
