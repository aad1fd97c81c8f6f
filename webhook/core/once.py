"""`once`: a property computed on first use and kept on the instance. Pure.

`functools.cached_property` does the same, but before Python 3.12 it takes a lock on every
first use (about a microsecond each), and a decision's properties are each first used once per
new pod on the admission path. Nothing here is shared between threads while being built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class once(Generic[T]):
    """A non-data descriptor: the first `__get__` stores the value in the instance's __dict__,
    which then answers every later lookup without calling the descriptor."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> once[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> T | once[T]:
        if instance is None:
            return self
        value = self.compute(instance)
        instance.__dict__[self.name] = value
        return value
