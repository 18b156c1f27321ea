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
