"""The registry: method name -> Method. ``vqfast.methods`` registers the built-in ones;
``register`` adds one from outside, and so does a ``vqfast.methods`` entry point whose
object is a Method (loaded on the first lookup)."""

import warnings
from importlib.metadata import entry_points
from typing import Dict, List

from vqfast.methods.api import Method, RunError
from vqfast.models import register_model, unregister_model

_METHODS: Dict[str, Method] = {}
_plugins_loaded = False


def register(method: Method, *, replace: bool = False) -> Method:
    """Makes ``method`` known to ``vqfast train/score``, run folders and checkpoints."""
    if not isinstance(method, Method):
        raise TypeError(f"register takes a vqfast.methods.Method, got {type(method).__name__}")
    if method.name in _METHODS and not replace:
        raise ValueError(f"a method named {method.name!r} is registered already (replace=True to replace it)")
    if not method.scorers:
        raise ValueError(f"method {method.name!r} offers no scorer")
    for model_cls, config_cls in method.models:
        register_model(model_cls, config_cls)
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Forgets a registered method and the model classes it brought."""
    method = _METHODS.pop(name, None)
    for model_cls, config_cls in (method.models if method is not None else ()):
        if not any(model_cls is m for other in _METHODS.values() for m, _ in other.models):
            unregister_model(model_cls)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group="vqfast.methods"):
        if ep.name in _METHODS:
            continue
        try:
            register(ep.load())
        except Exception as exc:  # another package's bug: its method is left out, vqfast still runs
            warnings.warn(f"vqfast.methods entry point {ep.name!r} ({ep.value}) not loaded: {type(exc).__name__}: "
                          f"{exc}", stacklevel=2)


def get(name: str) -> Method:
    _load_plugins()
    if name not in _METHODS:
        raise RunError(f"unknown method {name!r} (vqfast train takes {', '.join(_METHODS)})")
    return _METHODS[name]


def names() -> List[str]:
    _load_plugins()
    return list(_METHODS)


def known(name) -> bool:
    _load_plugins()
    return name in _METHODS
