"""The Swarm suite: one real three-node cluster for the whole run, removed afterwards.

Every test here is marked `swarm` (and `stack`, so `-m "not stack"` skips it too). The main
`uv run pytest` deselects them (pyproject's addopts); `uv run pytest -m swarm` runs them,
as `.ci/run` does in a step of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.harness import build_test_image
from tests.swarm.cluster import Cluster, swarm_cluster
from tests.swarm.deploying import SwarmStack, build_app_images, remove_app_images

SWARM_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SWARM_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.swarm)
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with swarm_cluster() as built:
        yield built


@pytest.fixture(scope="session")
def swarm_stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmStack]:
    """Berth's images in the cluster's registry, and the node for Postgres labelled; nothing
    deployed yet. The app's images are removed from this machine afterwards."""
    build_test_image()
    try:
        stack = SwarmStack(cluster, tmp_path_factory.mktemp("swarm"))
        stack.push_images(build_app_images())
        stack.label_db_node(cluster.manager.name)
        yield stack
    finally:
        remove_app_images()
