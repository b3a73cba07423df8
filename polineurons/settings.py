"""Settings as a study stores them: canonical JSON, a key hashed from it, and what changed between two.

A trial's file name carries the key of its full settings; a plan's guarded settings and a stage's
marker are compared with :func:`changed_settings` to name what a refused change would alter.
"""

from __future__ import annotations

import hashlib
import json


def settings_key(settings: dict) -> str:
    """The key of a settings dict: a hash of its canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def as_stored(settings: object) -> object:
    """``settings`` as JSON gives it back (tuples become lists), so stored and fresh compare equal."""
    return json.loads(json.dumps(settings))


def changed_settings(stored: dict, current: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """The dotted keys whose values differ between two nested settings dicts, with both values."""
    changes = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_settings(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append((f"{prefix}{key}", old, new))
    return changes


def describe_changes(changes: list[tuple[str, object, object]], limit: int = 6) -> str:
    """``key (stored X, now Y), ...`` — the first ``limit`` changes, then how many more."""
    shown = [f"{key} (stored {old!r}, now {new!r})" for key, old, new in changes[:limit]]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(shown) + more
