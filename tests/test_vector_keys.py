"""`VectorKeys` (the batch fast path) gives exactly the keys of `keys.digest` over the parts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachegate.embeddings import VectorKeys, vector_key
from cachegate.keys import KEY_SCHEMA_VERSION, Normalization, digest, normalize_text

texts = st.text(max_size=40)


@given(
    text=texts,
    tenant=st.none() | st.text(min_size=1, max_size=10),
    dimension=st.none() | st.sampled_from([256, 1024]),
    normalization=st.sampled_from(list(Normalization)),
)
def test_batch_keys_equal_the_digest_of_the_parts(
    text: str, tenant: str | None, dimension: int | None, normalization: Normalization
) -> None:
    parts = (
        "vector",
        str(KEY_SCHEMA_VERSION),
        "ns",
        "cohere",
        "embed-v4.0",
        "search_query",
        "float",
        "" if dimension is None else f"={dimension}",
        "",
        "",
        str(normalization.value),
        "global" if tenant is None else "t=" + tenant,
        normalize_text(text, normalization),
    )
    expected = "ns:v:" + digest(parts)
    options = {
        "model": "embed-v4.0",
        "input_type": "search_query",
        "embedding_type": "float",
        "tenant": tenant,
        "output_dimension": dimension,
        "normalization": normalization,
    }
    keys = VectorKeys("ns", **options)  # type: ignore[arg-type]
    assert keys.key(normalize_text(text, normalization)) == expected
    assert vector_key("ns", text=text, **options) == expected  # type: ignore[arg-type]
