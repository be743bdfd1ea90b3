"""Plug-in registries keyed by a config section's ``type`` field.

Edge sources, series sinks, state stores and notification channels are each chosen by
``type = "…"`` in the config. Each plug-in is one module that declares its own config
class (a :class:`PluginConfig` with ``type: Literal["name"]``) and registers a factory::

    SOURCES = Registry[Source]("edge source", discover="fallwatch.edge.sources")

    class ReplayConfig(PluginConfig):
        type: Literal["replay"] = "replay"
        path: Path

    @SOURCES.register(ReplayConfig)
    def make(cfg: ReplayConfig, ctx: SourceContext) -> Source: ...

The registry validates a section with a pydantic discriminated union of every
registered config class, so an unknown type or a misspelt key fails with the same
readable report as the rest of the config. ``discover`` names a package whose modules
are imported on first use: adding a plug-in there is one new file and nothing else.
Plug-ins living in a higher layer (the simulator source in the composition layer)
register themselves explicitly instead.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fallwatch.config import ConfigError, PluginSection, validation_report

T = TypeVar("T")
C = TypeVar("C", bound="PluginConfig")


class PluginConfig(BaseModel):
    """Base of every plug-in's config class: strict (unknown keys rejected) and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")  # ids: fallwatch.protocol.ids
    type: str


@dataclass(frozen=True, slots=True)
class Plugin(Generic[T]):
    name: str
    config: type[PluginConfig]
    factory: Callable[..., T]


class Registry(Generic[T]):
    """Named plug-ins of one kind; see the module docstring."""

    def __init__(self, kind: str, *, discover: str | None = None) -> None:
        self.kind = kind
        self._discover = discover
        self._discovered = discover is None
        self._plugins: dict[str, Plugin[T]] = {}
        self._adapter: TypeAdapter[Any] | None = None
        self._lock = threading.RLock()

    def register(self, config: type[C]) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``factory(cfg, *args, **kwargs) -> T`` for sections of ``config``'s type."""
        field = config.model_fields.get("type")
        name = field.default if field is not None else None
        if not isinstance(name, str) or not name:
            raise TypeError(f"{config.__name__}.type needs a Literal default naming the {self.kind} type")

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            with self._lock:
                old = self._plugins.get(name)
                if old is not None and (old.config, old.factory) != (config, factory):
                    raise ValueError(f"{self.kind} type {name!r} is registered twice")
                self._plugins[name] = Plugin(name, config, factory)
                self._adapter = None
            return factory

        return deco

    def _load(self) -> None:
        if self._discovered:
            return
        with self._lock:
            if self._discovered or self._discover is None:
                return
            pkg = importlib.import_module(self._discover)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self._discover}.{info.name}")
            self._discovered = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._plugins)

    def get(self, name: str) -> Plugin[T]:
        self._load()
        try:
            return self._plugins[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} type {name!r} (known: {', '.join(self.names()) or 'none'})"
                              ) from None

    def parse(self, section: PluginSection | PluginConfig | Mapping[str, object], where: str = "") -> PluginConfig:
        """Validate a raw section into its plug-in's config class (a discriminated union)."""
        if isinstance(section, PluginConfig):
            return section
        raw = section.model_dump() if isinstance(section, BaseModel) else dict(section)
        self.get(str(raw.get("type")))  # a clear "unknown type" before pydantic's union message
        with self._lock:
            if self._adapter is None:
                configs = tuple(p.config for p in self._plugins.values())
                union = configs[0] if len(configs) == 1 else Union[configs]  # noqa: UP007 (runtime union)
                # a type built at run time from what is registered, so it is not a static type form
                form: Any = Annotated[union, Field(discriminator="type")]
                self._adapter = TypeAdapter(form)
            adapter = self._adapter
        try:
            cfg: PluginConfig = adapter.validate_python(raw)
        except ValidationError as exc:
            raise ConfigError(validation_report(f"invalid {self.kind} config{f' {where}' if where else ''}",
                                                exc)) from None
        return cfg

    def create(self, section: PluginSection | PluginConfig | Mapping[str, object], *args: object,
               **kwargs: object) -> T:
        """Validate ``section`` and build the plug-in it names."""
        cfg = self.parse(section)
        return self.get(cfg.type).factory(cfg, *args, **kwargs)
