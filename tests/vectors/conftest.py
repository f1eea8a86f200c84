"""Vector files are part of the repository: a test whose file is missing fails.

:func:`tests.vectors.loader.params` stands one param, marked
``vector_file_missing(message)``, in for the vectors of an absent file; this
hook fails that test at setup with the message (the path), so a checkout
without its vectors can never pass by skipping them.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vector_file_missing(message): the vector file this test needs is absent"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    mark = item.get_closest_marker("vector_file_missing")
    if mark is not None:
        pytest.fail(str(mark.args[0]), pytrace=False)
