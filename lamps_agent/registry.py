"""A tiny name -> factory registry, so adding a policy or predictor is one new module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from lamps_agent.errors import UnknownNameError

T = TypeVar("T")
R = TypeVar("R")


class Registry(Generic[T]):
    """Maps names to factories; an unknown name raises an error listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self._kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise UnknownNameError(f"unknown {self._kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def construct(factory: Callable[..., R], what: str, /, **options: Any) -> R:
    """Call a registered factory; options it does not take raise a one-line error naming
    ``what`` (``"policy 'lamps'"``) instead of a bare ``TypeError``."""
    try:
        return factory(**options)
    except TypeError as exc:
        raise ValueError(f"{what}: bad option: {exc}") from None
