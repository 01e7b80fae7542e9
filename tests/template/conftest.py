from __future__ import annotations

from pathlib import Path

import pytest

TEMPLATE_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here `template`: they generate projects with copier, which takes a
    while, so `pytest -m "not stack and not template"` leaves them out of a quick run."""
    for item in items:
        if TEMPLATE_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.template)
