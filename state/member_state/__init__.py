"""Member state: what the homepage needs instantly about a member, kept current from the event
log, without Ray.

    views.py       what callers see: MemberSnapshot, ContinueWatching
    registers.py   the per-member last-writer-wins registers, and title info (series, episodes)
    decode.py      event rows as the columns the state applies
    model.py       MemberState: apply events idempotently by seq, read a member
    snapshot.py    the snapshot format (one long Parquet table; formats "1" and "2")
    consumer.py    MemberStateService: follows the log by seq, snapshots periodically

The Ray actor is actors/member_state.py.
"""

from state.member_state.consumer import MemberStateService
from state.member_state.errors import MemberStateError
from state.member_state.model import EventSource, MemberState
from state.member_state.registers import read_titles
from state.member_state.views import ContinueWatching, MemberSnapshot

__all__ = ["ContinueWatching", "EventSource", "MemberSnapshot", "MemberState", "MemberStateError",
           "MemberStateService", "read_titles"]
