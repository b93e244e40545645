"""Who may touch what (ARCHITECTURE.md): checked on the source, so a shortcut fails here.

- Only the job store (`producer/`) spells a queue's keys or sends Redis a command about jobs;
  `schemas/keys.py` defines the names and nothing else reads them.
- The gateway never imports the consumers: the composition root (`conveyor/`) hands it what
  it needs from them.
- Routes speak HTTP and do not import each other.
- The Python client (`conveyor/client/`) imports nothing of the server side.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["schemas", "producer", "consumers", "gateway", "conveyor"]
STORE = {"producer"}

# redis-py methods that read or write a queue's keys (streams, job hashes, indexes, scripts).
JOB_COMMANDS = frozenset(
    [
        "xadd",
        "xread",
        "xreadgroup",
        "xrange",
        "xrevrange",
        "xpending",
        "xpending_range",
        "xinfo_groups",
        "xinfo_consumers",
        "xinfo_stream",
        "xack",
        "xdel",
        "xlen",
        "xtrim",
        "xclaim",
        "xautoclaim",
        "xgroup_create",
        "xgroup_delconsumer",
        "xgroup_destroy",
        "hget",
        "hgetall",
        "hmget",
        "hset",
        "hdel",
        "hincrby",
        "hexists",
        "zadd",
        "zrange",
        "zrangebyscore",
        "zrevrangebyscore",
        "zrem",
        "zcard",
        "zscore",
        "evalsha",
        "eval",
        "register_script",
    ]
)
# What a key of a queue looks like spelled out: `{queue}:jobs`, `:idem:`, `:job:` ...
KEY_LITERAL = re.compile(r"\}:(jobs|events|delayed|dead|idem|tenant|job|consumers)\b|:idem:")


def modules(*packages: str) -> Iterator[tuple[str, ast.Module]]:
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            yield relative, ast.parse(path.read_text(), relative)


KEY_BUILDERS = {"schemas.keys.QueueKeys", "schemas.QueueKeys"}


def docstrings(tree: ast.Module) -> set[int]:
    """The docstring nodes: prose may draw a key, code may not spell one."""
    owners = [
        tree,
        *(
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        ),
    ]
    return {
        id(owner.body[0].value)
        for owner in owners
        if owner.body
        and isinstance(owner.body[0], ast.Expr)
        and isinstance(owner.body[0].value, ast.Constant)
    }


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


OUTSIDE_STORE = [m for m in modules(*PACKAGES) if m[0].split("/")[0] not in STORE]


@pytest.mark.parametrize(("path", "tree"), OUTSIDE_STORE, ids=[m[0] for m in OUTSIDE_STORE])
def test_only_the_store_talks_to_redis_about_jobs(path: str, tree: ast.Module) -> None:
    calls = sorted(
        {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in JOB_COMMANDS
        }
    )
    assert calls == [], f"{path} sends {calls}: ask the job store (producer/)"
    if not path.startswith("schemas/"):  # the contract defines the names; the store uses them
        keys = sorted(n for n in imported(tree) if n in KEY_BUILDERS)
        assert keys == [], f"{path} builds key names: ask the job store (producer/)"
    literals = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and KEY_LITERAL.search(node.value)
        and id(node) not in docstrings(tree)
        and path != "schemas/keys.py"
    ]
    assert literals == [], f"{path} spells keys: {literals[:3]}"


GATEWAY = list(modules("gateway"))


@pytest.mark.parametrize(("path", "tree"), GATEWAY, ids=[m[0] for m in GATEWAY])
def test_the_gateway_never_imports_the_consumers(path: str, tree: ast.Module) -> None:
    assert sorted(n for n in imported(tree) if n.split(".")[0] == "consumers") == []


ROUTES = [m for m in GATEWAY if m[0].startswith("gateway/routes/")]


@pytest.mark.parametrize(("path", "tree"), ROUTES, ids=[m[0] for m in ROUTES])
def test_routes_do_not_import_each_other(path: str, tree: ast.Module) -> None:
    others = sorted(n for n in imported(tree) if n.startswith("gateway.routes"))
    assert others == [], f"{path} imports {others}: share through a module of gateway/"


def test_the_checks_see_every_package() -> None:
    seen = {path.split("/")[0] for path, _ in modules(*PACKAGES)}
    assert seen == set(PACKAGES)
    assert any(path == "gateway/sse/hub.py" for path, _ in GATEWAY)


CLIENT = list(modules("conveyor/client"))
# What a machine that only submits jobs needs: the client, the contract, httpx and pydantic.
SERVER_SIDE = {"gateway", "producer", "consumers", "redis", "fastapi", "arq", "minio", "click"}


@pytest.mark.parametrize(("path", "tree"), CLIENT, ids=[m[0] for m in CLIENT])
def test_the_client_needs_only_httpx_and_the_contract(path: str, tree: ast.Module) -> None:
    server_side = sorted(n for n in imported(tree) if n.split(".")[0] in SERVER_SIDE)
    assert server_side == [], f"{path} imports {server_side}"
