"""Config building blocks shared by every component.

Every component config is a frozen pydantic model that forbids unknown keys. A field that holds
a registered component (``encoder``, ``objective``, ``data``) is typed with :func:`registered`,
which picks the concrete config class from the registry by the ``kind`` key. That lookup happens
at validation time, so a config class registered by a user's own file works exactly like a
built-in one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, SerializeAsAny, ValidationError

from nepa.registry import Registry, RegistryError


class Config(BaseModel):
    """Base of every config: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ComponentConfig(Config):
    """A config for a registered component; ``kind`` names its registry entry."""

    kind: str


def describe_error(err: ValidationError, model: type[BaseModel] | None, prefix: str = "") -> str:
    """Turn a pydantic error into lines that name the dotted key and the valid choices."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith("\n"):  # a nested component's own errors, from `registered`
            lines += [f"  {loc}.{inner.strip()}" for inner in msg.strip().splitlines()]
            continue
        if e["type"] == "extra_forbidden" and model is not None:
            owner = _model_at(model, e["loc"][:-1])
            if owner is not None:
                valid = ", ".join(owner.model_fields)
                msg = f"unknown key; valid keys here: {valid}"
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def registered(registry: Registry[Any], base: type[ComponentConfig]) -> Any:
    """Annotated type for a field holding any config registered in ``registry``."""

    def dispatch(value: Any) -> Any:
        if isinstance(value, base):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a {registry.what} config (a mapping with a 'kind' key)")
        kind = value.get("kind")
        if kind is None:
            raise ValueError(
                f"missing key 'kind'; known {registry.what} kinds: {', '.join(registry.names())}"
            )
        try:
            cls = registry.config_class(kind)
        except RegistryError as e:
            raise ValueError(f"kind: {e}") from None
        try:
            return cls.model_validate(value)
        except ValidationError as e:
            # Re-raised as ValueError so pydantic prefixes the outer key (e.g. "encoder").
            raise ValueError("\n" + describe_error(e, cls)) from None

    return Annotated[SerializeAsAny[base], BeforeValidator(dispatch)]
