"""The one error of member state."""

from __future__ import annotations


class MemberStateError(ValueError):
    """Input the member state cannot use (wrong columns, a bad snapshot, a broken source)."""
