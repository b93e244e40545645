"""Fixtures that start real servers on free loopback ports and stop them by pid."""

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.s3",
    "tests.fixtures.origin",
    "tests.fixtures.cluster",
    "tests.fixtures.tracing",
]
