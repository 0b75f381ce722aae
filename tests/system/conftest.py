"""The system tests' shared fixtures: one chromedriver per module for the browser tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.system.test_browser import CHROMEDRIVER, CHROMIUM, ChromeDriver


@pytest.fixture(scope="module")
def chromedriver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromeDriver]:
    """A chromedriver of the module's own; the test skips, saying why, without Chromium."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.skip(
            f"browser tests need Chromium and chromedriver (apt-get install chromium "
            f"chromium-driver); missing: {', '.join(missing)}"
        )
    driver = ChromeDriver(tmp_path_factory.mktemp("chromedriver"))
    try:
        yield driver
    finally:
        driver.stop()
