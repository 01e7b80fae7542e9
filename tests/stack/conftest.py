from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.stack.harness import Stack, build_test_image

STACK_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here `stack`, so `pytest -m "not stack"` runs only the fast ones."""
    for item in items:
        if STACK_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def test_image() -> None:
    build_test_image()


@pytest.fixture(scope="module")
def stack_factory(
    test_image: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    """Make stacks for one test module; every one is taken down afterwards, pass or fail."""
    made: list[Stack] = []
    workdir = tmp_path_factory.mktemp("stacks")

    def make(
        *overrides: str,
        files: tuple[str, ...] = ("compose.yaml",),
        root: Path | None = None,
        **env: str,
    ) -> Stack:
        stack = Stack(
            workdir=Path(workdir), overrides=overrides, env=env, files=files,
            root=root or Stack.root,
        )  # fmt: skip
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.down()
