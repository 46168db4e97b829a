"""Numeric settings read from environment variables, checked where they are read: a value that is
not a number, or out of its range, is refused with an error that names the variable."""

import os


def number_from_env(name: str, kind, default, low, high, what: str):
    """``kind(os.environ[name])`` (``default`` when unset or blank), within ``[low, high]``; ValueError
    otherwise, saying the variable must be ``what`` (``"a number of seconds"``, say)."""
    raw = os.environ.get(name, "").strip()
    try:
        value = kind(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {raw!r}.") from None
    if not low <= value <= high:  # also refuses nan
        raise ValueError(f"{name} must be between {low} and {high}, got {value}.")
    return value
