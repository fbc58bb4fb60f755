"""Keying remembers a request's facts under exactly what its policy's extractors read: a
remembered answer is always the one a fresh keying gives, and the memory stays bounded."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate import (
    Normalization,
    Policy,
    RequestView,
    as_int,
    authenticated,
    body_field,
    header,
    path_param,
    query_param,
    trusted_header,
)
from cachegate import keying as keying_module
from cachegate.extractors import BadRequest, Reads, request_reads
from cachegate.keying import Keying, RequestFacts
from cachegate.keys import KeySpace

KEYSPACE = KeySpace("memo")


def _guard(request: RequestView) -> bool:
    return True


def _policies() -> list[Policy]:
    """Policies whose extractors are all remembered, in every combination of inputs."""
    tenant = trusted_header("X-Workspace-ID")
    return [
        Policy(
            "/ask/{item}",
            tenant=tenant,
            key={"q": query_param("q"), "item": path_param("item")},
            subject=query_param("client_id"),
            methods=frozenset({"GET", "POST"}),
        ),
        Policy(
            "/ask/{item}",
            tenant=tenant,
            key={"q": query_param("q"), "n": as_int(query_param("n")), "v": header("X-Variant")},
            subject=as_int(trusted_header("X-Client")),
            normalization=Normalization.CASEFOLD,
            methods=frozenset({"GET"}),
        ),
        Policy(
            "/ask/{item}",
            tenant=tenant,
            key={"v": header("X-Variant"), "w": header("x-variant")},
            methods=frozenset({"GET"}),
        ),
        Policy(
            "/ask/{item}",
            tenant=tenant,
            key={"q": body_field("q"), "n": as_int(body_field("f.n")), "v": header("X-Variant")},
            subject=body_field("client_id"),
        ),
    ]


POLICIES = _policies()

BODIES = [
    b"",
    b'{"q": "a"}',
    b'{"q": "A", "client_id": "c"}',
    b'{"q": "a", "f": {"n": "01"}}',
    b'{"q": "a", "f": {"n": 1}}',
    b'{"q": 1}',
    b"[1]",
    b"not json",
    b"\xff",
]
small = st.sampled_from(["", "a", "A", "1", "01", "a b", "é", "%", "+"])
query_pairs = st.lists(
    st.tuples(st.sampled_from(["q", "client_id", "n", "Q"]), small),
    max_size=4,
)
header_values = st.lists(
    st.tuples(
        st.sampled_from([b"x-variant", b"x-client", b"x-other", b"content-type"]),
        st.sampled_from(
            [b"", b"a", b"A", b"1", b"01", b"\xe9", b"application/json", b"text/plain"]
        ),
    ),
    max_size=4,
)
requests = st.fixed_dictionaries(
    {
        "policy": st.integers(0, len(POLICIES) - 1),
        "method": st.sampled_from(["GET", "POST"]),
        "tenant": st.sampled_from(["t1", "t2"]),
        "query": query_pairs.map(
            lambda pairs: "&".join(
                f"{name}={value.replace('%', '%25').replace('+', '%2B').replace(' ', '+')}"
                for name, value in pairs
            ).encode()
        )
        | st.sampled_from([b"q=a&q=a", b"q=%zz", b"q", b"&&q=a", b"q=a+b", b"q=a%20b"]),
        "headers": header_values,
        "item": st.sampled_from(["1", "2", "x y"]),
        "body": st.sampled_from(BODIES),
    }
)


def _view(case: dict[str, Any]) -> RequestView:
    return RequestView(
        method=case["method"],
        path=f"/ask/{case['item']}",
        path_params={"item": case["item"]},
        headers=list(case["headers"]),
        query_string=case["query"],
        body=case.get("body", b""),
    )


def _outcome(keying: Keying, case: dict[str, Any]) -> RequestFacts | str:
    try:
        return keying.facts(POLICIES[case["policy"]], _view(case), case["tenant"])
    except BadRequest as error:
        return f"bypass:{error.reason}"


NEIGHBOURS = [  # each changes one input of a request: its facts may differ, never be mixed up
    lambda c: c | {"method": "POST" if c["method"] == "GET" else "GET"},
    lambda c: c | {"tenant": "t2" if c["tenant"] == "t1" else "t1"},
    lambda c: c | {"item": c["item"] + "x"},
    lambda c: c | {"query": c["query"] + b"&q=b"},
    lambda c: c | {"query": c["query"].replace(b"+", b"%20")},
    lambda c: c | {"headers": [*c["headers"], (b"x-variant", b"a")]},
    lambda c: c | {"headers": [*c["headers"], (b"x-client", b"1")]},
    lambda c: c | {"headers": c["headers"][:-1]},
    lambda c: c | {"policy": (c["policy"] + 1) % len(POLICIES)},
    lambda c: c | {"body": BODIES[(BODIES.index(c["body"]) + 1) % len(BODIES)]},
    lambda c: c | {"headers": [*c["headers"], (b"content-type", b"text/plain")]},
]


@given(cases=st.lists(requests, min_size=1, max_size=10))
@settings(max_examples=200)
def test_remembered_facts_are_always_what_fresh_keying_gives(cases: list[dict[str, Any]]) -> None:
    keying = Keying(KEYSPACE)
    for case in cases:
        for request in [case, *(change(case) for change in NEIGHBOURS), case]:
            assert _outcome(keying, request) == _outcome(Keying(KEYSPACE), request)


def test_a_repeated_request_is_keyed_once() -> None:
    keying = Keying(KEYSPACE)
    case = {"policy": 0, "method": "GET", "tenant": "t1", "query": b"q=a+b&client_id=c"}
    case |= {"headers": [], "item": "1"}
    first = _outcome(keying, case)
    assert isinstance(first, RequestFacts)
    assert _outcome(keying, case) is first
    assert _outcome(keying, case | {"tenant": "t2"}) is not first


def test_other_extractors_are_called_for_every_request() -> None:
    calls: list[str] = []

    def topic(request: RequestView) -> str:
        calls.append("topic")
        return "sleep"

    policy = Policy(
        "/ask", tenant=trusted_header("X-Workspace-ID"), key={"topic": topic, "q": query_param("q")}
    )
    keying = Keying(KEYSPACE)
    view = RequestView(
        method="POST", path="/ask", path_params={}, headers=[], query_string=b"q=a", body=b""
    )
    assert keying.facts(policy, view, "t1") == keying.facts(policy, view, "t1")
    assert calls == ["topic", "topic"]


def test_memory_keeps_the_newest_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keying_module, "MEMO_ENTRIES", 4)
    keying = Keying(KEYSPACE)
    cases = [
        {"policy": 0, "method": "GET", "tenant": "t1", "query": f"q={n}".encode()}
        | {"headers": [], "item": "1"}
        for n in range(10)
    ]
    first = [_outcome(keying, case) for case in cases]
    again = [_outcome(keying, case) for case in cases[-4:]]
    assert all(a is b for a, b in zip(again, first[-4:], strict=True))
    forgotten = _outcome(keying, cases[0])
    assert forgotten == first[0] and forgotten is not first[0]


def test_long_inputs_are_keyed_afresh() -> None:
    keying = Keying(KEYSPACE)
    long = b"q=" + b"a" * keying_module.MEMO_MAX_CHARS
    case = {"policy": 0, "method": "GET", "tenant": "t1", "query": long, "headers": []}
    case["item"] = "1"
    first = _outcome(keying, case)
    second = _outcome(keying, case)
    assert first == second and first is not second


class _Query(type(query_param("q"))):  # type: ignore[misc]
    """A subclass may read anything: it is not remembered."""


@pytest.mark.parametrize(
    ("extractor", "reads"),
    [
        (query_param("q"), Reads(query=True)),
        (header("X-Variant"), Reads(headers=(b"x-variant",))),
        (trusted_header("X-Client"), Reads(headers=(b"x-client",))),
        (path_param("item"), Reads()),
        (as_int(query_param("n")), Reads(query=True)),
        (as_int(body_field("n")), Reads(body=True, headers=(b"content-type",))),
        (body_field("query"), Reads(body=True, headers=(b"content-type",))),
        (authenticated("id"), None),
        (_guard, None),
        (_Query("q"), None),
    ],
)
def test_what_an_extractor_reads(extractor: Any, reads: Reads | None) -> None:
    assert request_reads(extractor) == reads


def test_reads_combine_without_repeats() -> None:
    combined = Reads(headers=(b"a",)) | Reads(query=True, headers=(b"b", b"a"))
    assert combined == Reads(query=True, headers=(b"a", b"b"))
    assert (Reads() | Reads(body=True)).body


def test_a_policys_key_cannot_change_under_the_memory() -> None:
    key = {"q": query_param("q")}
    policy = Policy("/ask", tenant=trusted_header("X-Workspace-ID"), key=key)
    key["v"] = header("X-Variant")
    assert list(policy.key) == ["q"]
    with pytest.raises(TypeError):
        policy.key["v"] = header("X-Variant")  # type: ignore[index]


def test_an_input_that_cannot_be_remembered_is_keyed_afresh() -> None:
    keying = Keying(KEYSPACE)
    case = {"policy": 2, "method": "GET", "tenant": "t1", "query": b"", "item": "1"}
    case["headers"] = [(b"x-variant", bytearray(b"a"))]  # a server sends bytes; never fail
    first = _outcome(keying, case)
    assert isinstance(first, RequestFacts)
    assert _outcome(keying, case) == first and _outcome(keying, case) is not first
