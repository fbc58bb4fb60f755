"""Names that were renamed: importing one raises an `ImportError` that names the new one,
instead of an `AttributeError` that leaves the reader guessing."""

from __future__ import annotations

from collections.abc import Callable, Mapping


def renamed(module: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` for `module` whose old `names` map to what replaced them."""

    def __getattr__(name: str) -> object:
        new = names.get(name)
        if new is not None:
            raise ImportError(f"{module}.{name} is now {new}")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
