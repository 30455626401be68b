"""Fixtures of the crash and fault tests.

Every test here runs under ``pytest.mark.crash``. The short forms run in CI;
environment variables select the long forms (see each module's docstring).
"""

from __future__ import annotations

import psutil
import pytest


@pytest.fixture(autouse=True)
def no_child_left():
    """After every test no child process of the test process may be left,
    whether the test passed or failed."""
    yield
    left = psutil.Process().children(recursive=True)
    desc = []
    for child in left:        # report, then reap: never leave them to the next test
        try:
            desc.append((child.pid, child.status()))
            child.kill()
            child.wait(10)
        except psutil.NoSuchProcess:
            pass
    assert not left, f"child processes left behind (pid, status): {desc}"
