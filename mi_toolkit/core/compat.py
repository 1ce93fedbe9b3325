"""Keyword names that an earlier release used, accepted with a ``DeprecationWarning`` (see CHANGELOG.md)."""

import functools
import warnings

__all__ = ["renamed_kwargs"]


def renamed_kwargs(**old_to_new: str):
    """Accept ``old=value`` for ``new=value`` on the decorated function, warning once per call.

    >>> @renamed_kwargs(pos="positions")
    ... def f(positions=-1): return positions
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     f(pos=2)
    2
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old!r} and its new name {new!r}")
                    warnings.warn(f"{fn.__name__}({old}=...) is now {fn.__name__}({new}=...)", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
