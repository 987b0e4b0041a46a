"""rliable, importable: ``from rayopt.analysis._rliable import rly, metrics``.

``rliable.library`` imports ``arch``, and arch 7.x calls pandas' private
``deprecate_kwarg`` with the pre-3.0 signature ``(old_name, new_name)``; pandas 3 added a
leading ``klass`` argument, so the import fails with a TypeError (arch 8 fixes that but
drops the ``random_state`` keyword rliable 1.2 passes, which breaks every bootstrap). We
accept the old call form for the duration of the import only, and pin ``arch<8``.

The bootstrap itself is rliable's, untouched. Note that rliable's ``StratifiedBootstrap``
draws its indices from NumPy's *global* generator (its ``random_state`` argument does not
reach them): reproducible intervals need ``np.random.seed`` before each call, which is what
:mod:`rayopt.analysis.stats` does.
"""

from __future__ import annotations

import warnings
from typing import Any


def _import() -> tuple[Any, Any]:
    try:
        import pandas.util._decorators as decorators
    except ImportError:  # pragma: no cover - no pandas, no arch either
        decorators = None
    original = getattr(decorators, "deprecate_kwarg", None)

    def compatible(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], str):  # arch's pre-pandas-3 call: (old, new)
            args = (FutureWarning, *args)
        return original(*args, **kwargs)

    if original is not None:
        decorators.deprecate_kwarg = compatible
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from rliable import library, metrics
    finally:
        if original is not None:
            decorators.deprecate_kwarg = original
    return library, metrics


rly, metrics = _import()

__all__ = ["metrics", "rly"]
