"""Keys: SHA-256 over every component, normalisation, stable across processes, no tenant data."""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from cachegate import (
    CacheGate,
    Metrics,
    Normalization,
    Policy,
    body_field,
    trusted_header,
)
from cachegate import keys as keys_module
from cachegate.keys import CacheScope, KeySpace, normalize_value

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
namespaces = st.text(
    alphabet=st.characters(exclude_characters="{}: \n", exclude_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
routes = st.text(max_size=15).map(lambda s: "/" + s)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "QUERY", "HEAD"])
texts = st.text(max_size=20)
materials = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

BASE: dict[str, Any] = {
    "version": 1,
    "namespace": "ns",
    "route": "/ai/query",
    "method": "POST",
    "tenant": "tenant-1",
    "subject": "client-1",
    "material": {"query": "what about sleep?", "top_k": 5},
}


def entry_key(parts: Mapping[str, Any]) -> str:
    saved = keys_module.KEY_SCHEMA_VERSION
    keys_module.KEY_SCHEMA_VERSION = parts["version"]
    try:
        return KeySpace(parts["namespace"]).entry_key(
            CacheScope(parts["tenant"], parts["subject"]),
            route=parts["route"],
            method=parts["method"],
            material=parts["material"],
        )
    finally:
        keys_module.KEY_SCHEMA_VERSION = saved


@st.composite
def two_values(draw: st.DrawFn) -> tuple[str, Any, Any]:
    """A component and two different values of it."""
    component = draw(
        st.sampled_from(
            [
                "version",
                "namespace",
                "route",
                "method",
                "tenant",
                "subject",
                "material_value",
                "material_name",
            ]
        )
    )
    strategy: st.SearchStrategy[Any] = {
        "version": st.integers(min_value=0, max_value=1000),
        "namespace": namespaces,
        "route": routes,
        "method": methods,
        "tenant": texts,
        "subject": st.none() | texts,
        "material_value": json_values,
        "material_name": st.text(max_size=8),
    }[component]
    a, b = draw(strategy), draw(strategy)
    if component == "material_value":
        # values that are equal in Python may still differ as JSON (1 / 1.0 / True): compare JSON
        assume(json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True))
    else:
        assume(a != b)
    return component, a, b


def with_component(component: str, value: Any, base: Mapping[str, Any]) -> dict[str, Any]:
    parts = dict(base)
    if component == "material_value":
        parts["material"] = {**base["material"], "query": value}
    elif component == "material_name":
        material = dict(base["material"])
        parts["material"] = {value: material.pop("query"), **material}
        assume(value != "top_k")
    else:
        parts[component] = value
    return parts


@given(
    pair=two_values(),
    tenant=texts,
    subject=st.none() | texts,
    material=st.fixed_dictionaries({"query": json_values, "top_k": json_values}),
)
@settings(max_examples=200, deadline=None)
def test_every_component_changes_the_key(
    pair: tuple[str, Any, Any], tenant: str, subject: str | None, material: dict[str, Any]
) -> None:
    component, a, b = pair
    base = {**BASE, "tenant": tenant, "subject": subject, "material": material}
    key_a = entry_key(with_component(component, a, base))
    key_b = entry_key(with_component(component, b, base))
    assert key_a != key_b, component


def test_subject_none_and_empty_subject_are_different_scopes() -> None:
    assert entry_key({**BASE, "subject": None}) != entry_key({**BASE, "subject": ""})


def test_schema_version_is_part_of_the_key() -> None:
    assert keys_module.KEY_SCHEMA_VERSION == 2  # 2: path parameters are always key material
    assert entry_key({**BASE, "version": 1}) != entry_key({**BASE, "version": 2})


def test_length_prefixing_keeps_part_boundaries() -> None:
    """ "ab"+"c" and "a"+"bc" must not encode alike."""
    assert entry_key({**BASE, "tenant": "ab", "subject": "c"}) != entry_key(
        {**BASE, "tenant": "a", "subject": "bc"}
    )
    assert entry_key({**BASE, "route": "/x", "method": "POST"}) != entry_key(
        {**BASE, "route": "/xP", "method": "OST"}
    )


@given(material=materials, method=methods)
@settings(deadline=None)
def test_equal_inputs_give_equal_keys(material: dict[str, Any], method: str) -> None:
    reordered = dict(reversed(list(material.items())))
    a = entry_key({**BASE, "material": material, "method": method})
    b = entry_key({**BASE, "material": reordered, "method": method.lower()})
    assert a == b
    assert re.fullmatch(r"ns:\{t:[0-9a-f]{24}\}:r:[0-9a-f]{64}", a)


_OTHER_PROCESS = """
import json, sys
from cachegate.keys import KeySpace, Normalization, CacheScope, normalize_value
out = []
for case in json.load(sys.stdin):
    material = normalize_value(case["material"], Normalization(case["normalization"]))
    space = KeySpace(case["namespace"])
    scope = CacheScope(case["tenant"], case["subject"])
    out.append([
        space.entry_key(scope, route=case["route"], method=case["method"], material=material),
        list(space.generation_keys(scope)),
        list(space.invalidation_keys(scope)),
    ])
json.dump(out, sys.stdout)
"""

cases = st.fixed_dictionaries(
    {
        "namespace": namespaces,
        "route": routes,
        "method": methods,
        "tenant": texts,
        "subject": st.none() | texts,
        "material": materials,
        "normalization": st.sampled_from([n.value for n in Normalization]),
    }
)


@given(batch=st.lists(cases, min_size=20, max_size=40))
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_equal_inputs_give_equal_keys_in_another_process(batch: list[dict[str, Any]]) -> None:
    here = []
    for case in batch:
        material = normalize_value(case["material"], Normalization(case["normalization"]))
        space = KeySpace(case["namespace"])
        scope = CacheScope(case["tenant"], case["subject"])
        here.append(
            [
                space.entry_key(
                    scope, route=case["route"], method=case["method"], material=material
                ),
                list(space.generation_keys(scope)),
                list(space.invalidation_keys(scope)),
            ]
        )
    # another interpreter, with another string-hash seed: hash() in a key would show here
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    result = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS],
        input=json.dumps(batch),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": seed},
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == here


# Characters that never occur in a key of namespace "ns": no hex digit, no n/s/r/g/t/a, no ":{}".
_NOT_IN_KEYS = "hijklmopquvwxyz" + string.ascii_uppercase + "éßж中-_ ."


@given(
    tenant=st.text(alphabet=_NOT_IN_KEYS, min_size=1, max_size=20),
    subject=st.none() | st.text(alphabet=_NOT_IN_KEYS, min_size=1, max_size=20),
    text=st.text(alphabet=_NOT_IN_KEYS, min_size=1, max_size=40),
)
@settings(deadline=None)
def test_no_tenant_id_or_text_in_any_key(tenant: str, subject: str | None, text: str) -> None:
    space = KeySpace("ns")
    scope = CacheScope(tenant, subject)
    every_key = [
        space.entry_key(scope, route="/ai/query", method="POST", material={"query": text}),
        space.tenant_tag(tenant),
        *space.generation_keys(scope),
        *space.invalidation_keys(scope),
        *space.generation_keys(CacheScope(tenant)),
        *space.invalidation_keys(CacheScope(tenant)),
    ]
    for key in every_key:
        assert set(key) <= set("ns:{}trgsa0123456789abcdef"), key
        for secret in (tenant, subject or tenant, text):
            assert secret not in key


@given(tenant=texts, subjects=st.lists(st.none() | texts, min_size=1, max_size=5), other=texts)
@settings(deadline=None)
def test_keys_of_one_tenant_share_the_hash_tag(
    tenant: str, subjects: list[str | None], other: str
) -> None:
    space = KeySpace("ns")
    keys = []
    for subject in subjects:
        scope = CacheScope(tenant, subject)
        keys.append(space.entry_key(scope, route="/q", method="POST", material={"q": subject}))
        keys += [*space.generation_keys(scope), *space.invalidation_keys(scope)]
    tags = {re.search(r"\{(.*?)\}", key).group(1) for key in keys}  # type: ignore[union-attr]
    assert tags == {"t:" + space.tenant_tag(tenant)}
    assert len({key_slot(key.encode()) for key in keys}) == 1  # one Redis Cluster slot
    if other != tenant:
        assert space.tenant_tag(other) != space.tenant_tag(tenant)


def test_generation_keys_per_scope() -> None:
    space = KeySpace("ns")
    tenant_wide, any_subject = space.generation_keys(CacheScope("t"))
    c1_tenant, c1 = space.generation_keys(CacheScope("t", "c1"))
    _, c2 = space.generation_keys(CacheScope("t", "c2"))
    assert c1_tenant == tenant_wide
    assert len({tenant_wide, any_subject, c1, c2}) == 4
    # invalidating a subject advances its own and the "any subject" generation
    assert set(space.invalidation_keys(CacheScope("t", "c1"))) == {c1, any_subject}
    assert space.invalidation_keys(CacheScope("t")) == (tenant_wide,)
    assert space.generation_keys(CacheScope("u", "c1"))[1] != c1


@pytest.mark.parametrize("bad", ["", "a:b", "a{b", "a}b", "a b", "a\nb"])
def test_namespace_must_not_break_the_key_layout(bad: str) -> None:
    with pytest.raises(ValueError):
        KeySpace(bad)


# ---- normalisation, through a policy as the middleware uses it ------------------------------


_GATES: dict[Normalization | None, tuple[Policy, CacheGate]] = {}


def policy_key(normalization: Normalization | None, **body: object) -> str:
    if normalization not in _GATES:
        options = {} if normalization is None else {"normalization": normalization}
        policy = Policy(
            "/ai/query",
            tenant=trusted_header("x-tenant"),
            subject=body_field("client_id"),
            key={"query": body_field("query"), "filters": body_field("filters")},
            **options,
        )
        metrics = Metrics(registry=CollectorRegistry())
        _GATES[normalization] = (policy, CacheGate(policies=[policy], metrics=metrics))
    policy, gate = _GATES[normalization]
    facts = gate.keys_for(
        "POST", "/ai/query", headers=[(b"x-tenant", b"t1")], body=json.dumps(body).encode()
    )
    return facts.key


def test_exact_is_the_default() -> None:
    base = policy_key(None, query="Sleep  problems")
    assert base == policy_key(Normalization.EXACT, query="Sleep  problems")
    for variant in ("sleep  problems", "Sleep problems", " Sleep  problems", "SLEEP  PROBLEMS"):
        assert policy_key(None, query=variant) != base


words = st.lists(st.text(alphabet=string.ascii_letters, min_size=1, max_size=6), min_size=1)
blanks = st.text(alphabet=" \t\n\r\u00a0\u2003", min_size=1, max_size=3)


@given(words=words, flips=st.lists(st.booleans(), min_size=60, max_size=60))
@settings(deadline=None)
def test_casefold_ignores_case_only(words: list[str], flips: list[bool]) -> None:
    text = " ".join(words)
    flipped = "".join(
        c.swapcase() if flip else c for c, flip in zip(text, flips * 10, strict=False)
    )
    assert policy_key(Normalization.CASEFOLD, query=text) == policy_key(
        Normalization.CASEFOLD, query=flipped
    )
    assert policy_key(Normalization.CASEFOLD, query=text) != policy_key(
        Normalization.CASEFOLD, query=text + " "
    )
    if flipped != text:
        assert policy_key(None, query=text) != policy_key(None, query=flipped)


def test_casefold_is_unicode_aware() -> None:
    fold = Normalization.CASEFOLD
    assert policy_key(fold, query="Straße") == policy_key(fold, query="STRASSE")
    assert policy_key(fold, query="\uff33\uff2c\uff25\uff25\uff30") == policy_key(
        fold, query="sleep"
    )  # NFKC


@given(words=words, seps=st.lists(blanks, min_size=1, max_size=12))
@settings(deadline=None)
def test_whitespace_collapsing_ignores_runs_of_whitespace_only(
    words: list[str], seps: list[str]
) -> None:
    spaced = seps[-1] + "".join(w + seps[i % len(seps)] for i, w in enumerate(words))
    single = " ".join(words)
    collapse = Normalization.COLLAPSE_WHITESPACE
    assert policy_key(collapse, query=spaced) == policy_key(collapse, query=single)
    if single.lower() != single:
        assert policy_key(collapse, query=single.lower()) != policy_key(collapse, query=single)
    loose = Normalization.LOOSE
    assert policy_key(loose, query=spaced.upper()) == policy_key(loose, query=single.lower())


def test_normalisation_reaches_nested_text_but_not_other_values() -> None:
    loose = Normalization.LOOSE
    assert policy_key(loose, query="q", filters={"tag": [" Anxiety  "]}) == policy_key(
        loose, query="q", filters={"tag": ["anxiety"]}
    )
    assert policy_key(loose, query="q", filters=[1, 2]) != policy_key(
        loose, query="q", filters=[2, 1]
    )
    assert policy_key(loose, query="q", filters=1) != policy_key(loose, query="q", filters="1")
    assert normalize_value({"A": " B "}, loose) == {"A": "b"}  # names are not text of the user


def test_subject_is_part_of_the_key_material_path() -> None:
    assert policy_key(None, query="q", client_id="c1") != policy_key(
        None, query="q", client_id="c2"
    )
    assert policy_key(None, query="q", client_id="c1") != policy_key(None, query="q")


surrogate_texts = st.text(
    alphabet=st.characters(categories=["Cs", "Ll", "Nd"]), min_size=1, max_size=6
)


@given(a=surrogate_texts, b=surrogate_texts)
@settings(deadline=None)
def test_lone_surrogates_key_and_stay_distinct(a: str, b: str) -> None:
    """JSON can carry lone surrogates ("\\ud800"); keying must neither fail nor conflate."""
    space = KeySpace("ns")
    for scope in (CacheScope(a, b), CacheScope(b, a), CacheScope(a)):
        space.generation_keys(scope)
        space.invalidation_keys(scope)
    key_a = entry_key({**BASE, "tenant": a, "material": {"query": a}})
    key_b = entry_key({**BASE, "tenant": b, "material": {"query": b}})
    assert (key_a == key_b) == (a == b)
    assert entry_key({**BASE, "subject": "\ud83d\ude00"}) != entry_key({**BASE, "subject": "😀"})


@given(value=json_values)
def test_canonical_json_is_the_sorted_compact_dump(value: Any) -> None:
    """The shared encoder writes what `json.dumps` with the canonical options writes."""
    reference = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8", "surrogatepass")
    assert keys_module.canonical_json(value) == reference


@pytest.mark.parametrize(
    ("value", "error"),
    [({"x": float("nan")}, ValueError), ({"x": {1, 2}}, TypeError), ({"x": b"raw"}, TypeError)],
)
def test_canonical_json_refuses_what_json_cannot_say(value: Any, error: type[Exception]) -> None:
    """Keying turns these into an `extractor_error` bypass: never a key of a lossy rendering."""
    with pytest.raises(error):
        keys_module.canonical_json(value)


def test_key_schema_2_is_pinned() -> None:
    """Known inputs give known keys: a change to key derivation is a schema change, made on
    purpose with a new KEY_SCHEMA_VERSION, never by a refactoring or an optimisation."""
    space = KeySpace("cg")
    material = {"query": "Hé?", "n": [1, 2.5, None, True]}
    subject_key = space.entry_key(
        CacheScope("t1", "c1"),
        route="/ai/query",
        method="post",
        material=material,
        path_params={"id": "7"},
    )
    assert subject_key == (
        "cg:{t:84b50a62de61030ac5e54140}:r:"
        "783bd615e2e41e0744bd502244f27958e4b99da456340268092169c0ede496de"
    )
    tenant_key = space.entry_key(CacheScope("t1", None), route="/q", method="GET", material={})
    assert tenant_key == (
        "cg:{t:84b50a62de61030ac5e54140}:r:"
        "f6f6ddf793492056b0e1d18623883ddd206ed4d5f2446136b3d32cf0418648ee"
    )
