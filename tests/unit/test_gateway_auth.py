from __future__ import annotations

from gateway.auth import FIREHOSE_SCOPE, ApiKeys, EventTokens, job_scope


def test_api_keys_map_to_their_tenant() -> None:
    keys = ApiKeys({"k1": "acme", "k2": "globex"})
    assert keys.tenant("k1") == "acme"
    assert keys.tenant("k2") == "globex"
    assert keys.tenant("k3") is None
    assert keys.tenant("") is None


def test_a_token_is_valid_for_its_scope_until_it_expires() -> None:
    tokens = EventTokens(b"secret", ttl_s=60)
    token = tokens.issue(job_scope("j1"), "acme", now=1000)
    assert tokens.verify(job_scope("j1"), token, now=1059) == "acme"
    assert tokens.verify(job_scope("j1"), token, now=1061) is None
    assert tokens.verify(job_scope("j2"), token, now=1000) is None
    assert tokens.verify(FIREHOSE_SCOPE, token, now=1000) is None


def test_a_token_cannot_be_altered_or_made_elsewhere() -> None:
    tokens = EventTokens(b"secret", ttl_s=60)
    token = tokens.issue(job_scope("j1"), "acme", now=1000)
    tenant, expires, signature = token.split(".")
    later = f"{tenant}.{int(expires) + 3600}.{signature}"
    assert tokens.verify(job_scope("j1"), later, now=1000) is None
    other_tenant = tokens.issue(job_scope("j1"), "globex", now=1000).split(".")[0]
    assert tokens.verify(job_scope("j1"), f"{other_tenant}.{expires}.{signature}", now=1000) is None
    assert EventTokens(b"other", ttl_s=60).verify(job_scope("j1"), token, now=1000) is None
    for garbage in ["", "a.b", "a.b.c.d", "!!.1.x", "YQ.notanumber.x", "YWNtZQ.9999999999.é"]:
        assert tokens.verify(job_scope("j1"), garbage, now=1000) is None


def test_a_token_with_non_ascii_characters_is_refused_not_an_error() -> None:
    tokens = EventTokens(b"secret", ttl_s=60)
    tenant, expires, signature = tokens.issue(job_scope("j1"), "acme", now=1000).split(".")
    for forged in [f"{tenant}.{expires}.{signature[:-1]}é", f"{tenant}é.{expires}.{signature}"]:
        assert tokens.verify(job_scope("j1"), forged, now=1000) is None
