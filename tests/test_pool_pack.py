"""`pool.pack`, the direct path's command encoder, sends what redis-py's `pack_command` sends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis._parsers import Encoder
from redis.asyncio.connection import Connection

from cachegate.store.pool import pack

arguments = st.lists(st.text(max_size=40) | st.binary(max_size=40), min_size=1, max_size=12)


@given(arguments)
def test_a_command_is_packed_as_redis_py_packs_it(args: list[str | bytes]) -> None:
    connection = Connection()
    assert pack(("MGET", *args), connection.encoder) == b"".join(
        connection.pack_command("MGET", *args)
    )


def test_strings_take_the_connections_encoding() -> None:
    latin = Encoder(encoding="latin-1", encoding_errors="strict", decode_responses=False)
    assert pack(("GET", "é"), latin) == b"*2\r\n$3\r\nGET\r\n$1\r\n\xe9\r\n"
    with pytest.raises(UnicodeEncodeError):
        pack(("GET", "\u2603"), latin)
