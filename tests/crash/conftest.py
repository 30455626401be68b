"""Fixtures of the crash and fault tests.

Every test here runs under ``pytest.mark.crash``. The short forms run in CI;
environment variables select the long forms (see each module's docstring).
"""

from __future__ import annotations

# The project-wide ``no_stray_processes`` fixture (tests/conftest.py) checks
# after every test that no process it started is left behind.
