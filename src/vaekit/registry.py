"""Name -> factory registries (models, likelihoods, priors, datasets, nets)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories: ``@MODELS.register("vae")`` then ``MODELS.get("vae")``.

    Unknown names raise :class:`UsageError` listing the valid names, with a "did you mean".
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        msg = f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
        close = difflib.get_close_matches(name, list(self._items), n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        return msg

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
