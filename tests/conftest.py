"""Shared pytest configuration for the rigl_keras test suite.

* Quiets TensorFlow's C++ logging (set before TensorFlow is imported by any
  test module; an explicit value in the environment wins).
* Adds a `--runslow` flag: tests marked `@pytest.mark.slow` are skipped
  unless it is given, e.g. `python -m pytest -m slow --runslow`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_addoption(parser):
    """Registers the `--runslow` command line flag."""
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="also run tests marked @pytest.mark.slow",
    )


def pytest_configure(config):
    """Registers the `slow` marker (also declared in pyproject.toml)."""
    config.addinivalue_line(
        "markers", "slow: heavier tests, run in CI when time allows"
    )


def pytest_collection_modifyitems(config, items):
    """Skips slow-marked tests unless `--runslow` was given."""
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: pass --runslow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
