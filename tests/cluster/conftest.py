from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.redisserver import RedisServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with RedisServer() as redis:
        cl = Cluster(redis=redis, workdir=Path(tmp_path_factory.mktemp("cluster")))
        try:
            cl.start()
            yield cl
        finally:
            cl.stop()
