"""Named registries for distillers, backbones and datasets, with entry-point discovery.

Built-ins register themselves when their package is imported; third-party packages add entries through the
entry-point groups ``kdbench.distillers``, ``kdbench.backbones`` and ``kdbench.datasets``, loaded on the first
lookup miss or listing. ``KDBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry-point loading off.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import logging
import os
import re
import sys
from typing import Callable, Generic, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


class Registry(Generic[T]):
    """A name → object map; ``register`` works as a decorator with or without a name."""

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.group = entry_point_group
        self._entries: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._plugins_loaded = False
        self.broken_plugins: dict[str, str] = {}
        #: builds an entry for a name that is not registered (e.g. ``de+rrd`` from its parts), or returns None
        self.factory: Callable[[str], T | None] | None = None

    def register(self, name: str | Callable | None = None, *, override: bool = False) -> Callable[[T], T] | T:
        """``@REG.register("name")`` or ``@REG.register`` (uses the object's ``name`` attribute)."""

        def deco(obj: T) -> T:
            key = name if isinstance(name, str) else getattr(obj, "name", None) or obj.__name__.lower()
            if key in self._entries and not override:
                raise ValueError(
                    f"{self.kind} {key!r} is already registered by {self._origin[key]}; "
                    f"pick another name or pass override=True")
            if key in self._entries:
                log.warning("%s %r from %s overrides the one from %s", self.kind, key,
                            getattr(obj, "__module__", "?"), self._origin[key])
            if isinstance(obj, type) and getattr(obj, "name", None) != key:
                obj.name = key  # the registry key is the canonical name everywhere (records, CLI)
            self._entries[key] = obj
            self._origin[key] = getattr(obj, "__module__", "?")
            return obj

        if callable(name) and not isinstance(name, str):
            obj, name = name, None
            return deco(obj)
        return deco

    def load_plugins(self) -> None:
        if self._plugins_loaded or os.environ.get("KDBENCH_DISABLE_PLUGIN_AUTOLOAD") == "1":
            return
        self._plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break kdbench: log, mark, go on
                self.broken_plugins[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
                log.warning("could not load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, exc)
                continue
            if ep.name not in self._entries:  # loading the module may have registered it already
                self.register(ep.name)(obj)
            self._origin[ep.name] = f"{ep.value} (entry point {self.group})"

    def get(self, name: str) -> T:
        if name not in self._entries:
            self.load_plugins()
        if name not in self._entries and self.factory is not None:
            built = self.factory(name)
            if built is not None:
                self.register(name)(built)
        if name not in self._entries:
            raise KeyError(self._unknown_message(name))
        return self._entries[name]

    def _unknown_message(self, name: str) -> str:
        names = self.list()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        msg += f" available: {', '.join(names) or '(none)'} (entry-point group {self.group!r} was searched"
        if self.broken_plugins:
            msg += f"; plugins that failed to load: {', '.join(sorted(self.broken_plugins))}"
        return msg + ")"

    def list(self, pattern: str = "*") -> list[str]:
        self.load_plugins()
        return sorted((n for n in self._entries if fnmatch.fnmatch(n, pattern)), key=_natural_key)

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origin[name]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())


def import_plugin_module(spec: str) -> None:
    """Import ``pkg.module`` or a ``path/to/file.py`` so that its ``register`` decorators run."""
    if spec.endswith(".py") or os.sep in spec:
        import importlib.util

        if not os.path.exists(spec):
            raise FileNotFoundError(f"--import {spec}: no such file")
        mod_name = "kdbench_plugin_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(spec))[0])
        if mod_name in sys.modules:  # once per process: a second run of its decorators would be a duplicate
            return
        spec_obj = importlib.util.spec_from_file_location(mod_name, spec)
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[mod_name] = module
        try:
            spec_obj.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]
            raise
        return
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"--import {spec}: {exc}. Is the module on PYTHONPATH or installed?") from exc
