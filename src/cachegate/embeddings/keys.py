"""The store key of one text's vector: `keys.encode_parts` and `KeySpace.digest_bytes`, as in L1.

Provider, model, input type, embedding type, output dimension, truncate, max tokens,
normalisation, key-schema version and the tenant are encoded once per call and type; each text
then costs one short hash. Text and tenant only ever appear digested.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict, Unpack

from cachegate.keys import (
    KEY_SCHEMA_VERSION,
    KeySpace,
    Normalization,
    encode_parts,
    encode_text,
    normalize_text,
)

PROVIDER = "cohere"


class KeyOptions(TypedDict, total=False):
    """The optional parts of a vector key, besides model, input type, type and tenant."""

    output_dimension: int | None
    truncate: str | None
    max_tokens: int | None
    normalization: Normalization
    provider: str
    secret: bytes | None


def _optional(value: object) -> str:
    """An option left out and an option given never encode alike."""
    return "" if value is None else f"={value}"


class VectorKeys:
    """The keys of one call's texts for one embedding type (equal to `keys.digest` of the parts)."""

    __slots__ = ("_head", "_keyspace", "_prefix", "normalization")

    def __init__(
        self,
        namespace: str,
        *,
        model: str,
        input_type: str,
        embedding_type: str,
        tenant: str | None,
        **options: Unpack[KeyOptions],
    ) -> None:
        normalization = options.get("normalization", Normalization.EXACT)
        self._keyspace = KeySpace(namespace, options.get("secret"))
        self._head = encode_parts(
            (
                "vector",
                str(KEY_SCHEMA_VERSION),
                namespace,
                options.get("provider", PROVIDER),
                model,
                input_type,
                embedding_type,
                _optional(options.get("output_dimension")),
                _optional(options.get("truncate")),
                _optional(options.get("max_tokens")),
                str(normalization.value),
                "global" if tenant is None else "t=" + tenant,
            )
        )
        self._prefix = f"{namespace}:v:"
        self.normalization = normalization

    def key(self, normalized_text: str) -> str:
        """The key of a text already normalised with `self.normalization`."""
        return self.keys((normalized_text,))[0]

    def keys(self, normalized_texts: Iterable[str]) -> list[str]:
        """The keys of texts already normalised with `self.normalization`, in order."""
        prefix, head, digest = self._prefix, self._head, self._keyspace.digest_bytes
        return [prefix + digest(head + encode_text(text)) for text in normalized_texts]


def vector_key(
    namespace: str,
    *,
    model: str,
    input_type: str,
    embedding_type: str,
    text: str,
    tenant: str | None,
    **options: Unpack[KeyOptions],
) -> str:
    """The store key of one text's vector of one embedding type.

    `tenant=None` is the global scope. The text is normalised first and only digested, like the
    tenant (an HMAC with `secret`).
    """
    keys = VectorKeys(
        namespace,
        model=model,
        input_type=input_type,
        embedding_type=embedding_type,
        tenant=tenant,
        **options,
    )
    return keys.key(normalize_text(text, keys.normalization))
