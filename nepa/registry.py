"""One small generic registry per kind of component (encoders, scans, objectives, datasets).

A registry maps a name to a builder and, for configurable components, to the pydantic config
class whose ``kind`` field equals that name. Registration happens by decorator, either inside
the package (imported from ``nepa/__init__``) or in a user's own module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class RegistryError(KeyError):
    """Raised for duplicate or unknown names; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> (builder, config class). ``kind`` of the config must equal the name."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._configs: dict[str, type[BaseModel]] = {}

    def register(self, name: str, config: type[BaseModel] | None = None) -> Callable[[T], T]:
        """Decorator: ``@ENCODERS.register("image", config=ImageEncoderConfig)``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise RegistryError(
                    f"{self.what} {name!r} is already registered ({self._items[name]!r}); "
                    "pick another name"
                )
            if config is not None:
                default_kind = config.model_fields.get("kind")
                if default_kind is None or default_kind.default != name:
                    raise RegistryError(
                        f"config {config.__name__} registered as {self.what} {name!r} must have "
                        f"a field `kind: Literal[{name!r}] = {name!r}`"
                    )
                self._configs[name] = config
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.what} {name!r}; known: {', '.join(self.names()) or '(none)'}"
            ) from None

    def config_class(self, name: str) -> type[BaseModel]:
        self.get(name)  # raises with the list of known names
        try:
            return self._configs[name]
        except KeyError:
            raise RegistryError(
                f"{self.what} {name!r} was registered without a config class"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names()})"
