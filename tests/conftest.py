"""Shared test fixtures: paths to ../shared reference data (skip when absent) and a private run folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the calling test when it is absent (a user's own clone)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference data not available: {p}")
    return p


@pytest.fixture
def coco_sample() -> Path:
    """The four real COCO val2017 images with ground truth (../shared/realdata/coco_sample)."""
    return shared_path("realdata", "coco_sample")


@pytest.fixture
def golden() -> Path:
    """Golden tensors from the upstream reference code (../shared/golden)."""
    return shared_path("golden")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test writes run artifacts to a private folder, never to the user's runs/."""
    if "POSEKD_TEST_HOME" not in os.environ:
        os.environ["POSEKD_TEST_HOME"] = str(tmp_path_factory.getbasetemp() / "posekd_home")
    monkeypatch.setenv("POSEKD_HOME", os.environ["POSEKD_TEST_HOME"])
    monkeypatch.setenv("POSEKD_MODE", "quick")


def pytest_sessionfinish(session, exitstatus):
    """Close FiftyOne's database client, if a test opened one, so nothing warns at interpreter exit."""
    import sys

    db = sys.modules.get("fiftyone.core.odm.database")
    if db is not None:
        db._disconnect()


# --------------------------------------------------------------------------------------------
# float32 tolerances for golden comparisons
#
# A golden output made on one CPU is reproduced on another only up to float32 rounding: oneDNN
# (and ATen) pick their convolution / GEMM kernels by the CPU's instruction set (AVX-512, AVX2,
# SSE4.1, ...), and each kernel sums a layer's products in its own order (blocking, vector
# lanes, FMA or not). The tolerance is the worst-case rounding error of such a sum:
#
#   a dot product s = sum_i x_i*y_i of n terms, computed in float32 in ANY order, with or
#   without FMA, satisfies |fl(s) - s| <= gamma_n * sum_i |x_i*y_i|, gamma_n = n*u/(1 - n*u)
#   ~ n*u, u = 2**-24 (the float32 unit roundoff; Higham, "Accuracy and Stability of Numerical
#   Algorithms", 2nd ed., eq. 3.5 / Lemma 3.1).
#
# The golden machine and this one are each within gamma_n*S of the exact value, so they differ
# by at most 2*n*u*S. S = sum |x_i*y_i| is taken as max|reference| (the output's magnitude; no
# heavy cancellation), and n as the longest sum in the model: the largest fan-in C_in/groups *
# kH * kW of a convolution, in_features of a linear layer (or a batch-statistics reduction, when
# a test runs BatchNorm in train mode). This bounds one layer; error carried in from earlier
# layers is covered in practice because the bound is linear in n while real rounding errors are
# random and grow like sqrt(n)*u (the golden tests see diffs ~100-1000x below it). It still
# fails any real defect: a wrong weight, BN statistic or layer order moves outputs by O(1e-2)
# of their magnitude or more, and the bound is ~1e-4 of it for n ~ 1e3.

FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24


def longest_dot_product(model) -> int:
    """n: the most products one output element of `model`'s convolution / linear layers sums
    (C_in/groups * prod(kernel) for Conv*d and ConvTranspose*d, in_features for Linear)."""
    from torch import nn

    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                          nn.ConvTranspose3d)):
            k = 1
            for s in m.kernel_size:
                k *= int(s)
            n = max(n, m.in_channels // m.groups * k)
        elif isinstance(m, nn.Linear):
            n = max(n, m.in_features)
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no convolution or linear layer")
    return n


def float32_atol(reference, n: int) -> float:
    """2 * n * u * max|reference| (see the derivation above): how far two float32 computations
    of `reference` whose longest sum has `n` terms may differ, whatever kernel each used."""
    import torch

    ref = torch.as_tensor(reference)
    return 2.0 * n * FLOAT32_UNIT_ROUNDOFF * float(ref.detach().abs().max())


def assert_float32_close(actual, expected, model=None, *, n: int | None = None,
                         what: str = "output") -> float:
    """Assert `actual` equals the float32 golden `expected` up to `float32_atol` with `n` the
    longest dot product of `model` (or the `n` given, e.g. max(fan-in, a BN batch reduction)).
    Prints and returns the max abs difference, so a run with ``-s`` shows the margin."""
    import torch

    if n is None:
        if model is None:
            raise TypeError("assert_float32_close needs the model or n")
        n = longest_dot_product(model)
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    atol = float32_atol(expected, n)
    diff = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    print(f"[float32 golden] {what}: max abs diff {diff:.3g}, atol {atol:.3g} "
          f"(n={n}, max|ref|={float(expected.abs().max()):.4g})")
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol,
                               msg=lambda m: f"{what}: {m}\n(float32 tolerance 2*n*u*max|ref| with "
                                             f"n={n}, u=2**-24: atol={atol:.3g})")
    return diff


def ai8x_qat_is_exact_in_float32(m, x) -> bool:
    """Whether a QAT forward of the ai8x model `m` on `x` is exact in float32 whatever the
    summation order, so its golden comparisons can stay bit-exact on every CPU. It is when:
    the input is on the 1/128 grid (every later layer's input is too: QAT rounds each 8-bit
    output to it, and pooling, adds and clamps keep it there), weights are on the 2**-(b-1)
    grid and biases on the coarser-or-equal 2**-(bb-1) grid (both times the same power of two
    2**-shift), and no BatchNorm is left. Then every product and partial sum is an integer
    number of units 2**-(b-1+7) (x 2**-shift), at most (fan-in + 1) * 2**(b-1+7) of them;
    float32 holds every integer up to 2**24 exactly, and power-of-two scaling, ReLU, rounding
    to the grid and clamping are exact too. (A fan-in above 1023 at 8 bits breaks this.)"""
    import torch

    from posekd_lib.mcu import ai8x

    if not torch.equal(x * 128, torch.round(x * 128)):
        return False
    for _, layer in ai8x.ai8x_layers(m):
        if layer.op is None:
            continue
        wb = int(layer.weight_bits)
        if not wb or layer.bn is not None or \
                (longest_dot_product(layer.op) + 1) * 2 ** (wb - 1 + 7) > 2 ** 24:
            return False
    return True
