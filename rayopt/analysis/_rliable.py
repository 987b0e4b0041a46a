"""rliable, importable: ``from rayopt.analysis._rliable import rly, metrics``.

``rliable.library`` imports ``arch``, and arch 7.x calls pandas' private
``deprecate_kwarg`` with the pre-3.0 signature ``(old_arg_name, new_arg_name)``. pandas 3
added a leading ``klass`` argument, so under pandas 3 the import fails with a TypeError
(arch 8 fixes that but drops the ``random_state`` keyword rliable 1.2 passes, which breaks
every bootstrap; hence ``arch<8``). Under pandas 3 only, and for the duration of the
import only, the old call form is accepted; under pandas 2.x, where arch's call is
already right, nothing is touched (:func:`adapt` decides from the signature).

The bootstrap itself is rliable's, untouched. Note that rliable's ``StratifiedBootstrap``
draws its indices from NumPy's *global* generator (its ``random_state`` argument does not
reach them): reproducible intervals need ``np.random.seed`` before each call, which is what
:mod:`rayopt.analysis.stats` does.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any


def adapt(original: Callable[..., Any]) -> Callable[..., Any] | None:
    """A ``deprecate_kwarg`` that also takes arch's pre-pandas-3 call ``(old, new)``, or
    None when ``original`` already has that signature (pandas 2.x: leave it alone)."""
    try:
        first = next(iter(inspect.signature(original).parameters), None)
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return None
    if first != "klass":  # pandas 2.x: deprecate_kwarg(old_arg_name, new_arg_name, ...)
        return None

    def compatible(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], str):  # arch's pre-pandas-3 call: (old, new)
            args = (FutureWarning, *args)
        return original(*args, **kwargs)

    return compatible


def _import() -> tuple[Any, Any]:
    try:
        import pandas.util._decorators as decorators
    except ImportError:  # pragma: no cover - no pandas, no arch either
        decorators = None
    original = getattr(decorators, "deprecate_kwarg", None)
    patched = adapt(original) if original is not None else None
    if patched is not None:
        decorators.deprecate_kwarg = patched
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from rliable import library, metrics
    finally:
        if patched is not None:
            decorators.deprecate_kwarg = original
    return library, metrics


rly, metrics = _import()

__all__ = ["adapt", "metrics", "rly"]
