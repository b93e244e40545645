"""`Settings`: what CONVEYOR_API_KEYS may say, and the clear errors for what it may not."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.settings import Settings


def settings(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def test_key_tenant_pairs_split_at_the_last_equals_sign() -> None:
    keys = settings(api_keys="k1=acme, c2VjcmV0==globex ,a=b=c=initech").api_keys
    assert keys == {"k1": "acme", "c2VjcmV0=": "globex", "a=b=c": "initech"}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("k1=a,k1=b", "twice"),
        ("k1=a,k1=a", "twice"),
        ("k1", "is not key=tenant"),
        ("=acme", "is not key=tenant"),
        ("k1=", "is not key=tenant"),
        ("k1=acme:prod", "tenant 'acme:prod'"),
        ("k1=:acme", "tenant ':acme'"),
        ("k1=ac me", "tenant 'ac me'"),
        ("k1=" + "t" * 65, "tenant"),
        ("k é=acme", "visible ASCII"),
    ],
)
def test_ambiguous_or_unusable_api_keys_are_refused_at_start(value: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        settings(api_keys=value)


def test_tenants_given_as_a_mapping_are_checked_too() -> None:
    with pytest.raises(ValidationError, match="tenant names are part of Redis keys"):
        Settings(_env_file=None, api_keys={"k": "acme:prod"})  # type: ignore[call-arg]


def test_an_error_never_prints_a_whole_key() -> None:
    with pytest.raises(ValidationError) as info:
        settings(api_keys="supersecretkey=a,supersecretkey=b")
    assert "supersecretkey" not in str(info.value)
