"""An engine's phases and the transitions allowed between them: the engine lifecycle's state machine in one place.

    downloading -> launching -> booting -> active <-> sleeping
         |             |           |         |           |
         +-------------+-----------+----+----+-----------+---> failed
                                        v                          |
                                    stopping <---------------------+
                                        |
                                        v
                                      gone   (record removed; never written)

`downloading`: the artifact is being fetched, nothing runs. `launching`: the record names a launch id and the engine
may be starting (its pid is not recorded yet). `booting`: its pid is recorded, it has not answered /health yet.
`failed`: it exited by itself (its record stays, for the controller to see, until deactivated). `stopping`: a stop
owns it. Every transition goes through `check`; one not in the table is a bug in outrider and raises
IllegalTransition rather than leaving a record that says something that cannot be.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    DOWNLOADING = "downloading"
    LAUNCHING = "launching"
    BOOTING = "booting"
    ACTIVE = "active"
    SLEEPING = "sleeping"
    STOPPING = "stopping"
    FAILED = "failed"
    GONE = "gone"


_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.DOWNLOADING: frozenset({Phase.LAUNCHING, Phase.STOPPING}),
    Phase.LAUNCHING: frozenset({Phase.BOOTING, Phase.STOPPING, Phase.FAILED}),
    Phase.BOOTING: frozenset({Phase.ACTIVE, Phase.STOPPING, Phase.FAILED}),
    Phase.ACTIVE: frozenset({Phase.SLEEPING, Phase.STOPPING, Phase.FAILED}),
    Phase.SLEEPING: frozenset({Phase.ACTIVE, Phase.STOPPING, Phase.FAILED}),
    Phase.FAILED: frozenset({Phase.STOPPING}),
    Phase.STOPPING: frozenset({Phase.GONE}),
    Phase.GONE: frozenset(),
}
# Phases written to a record (GONE is the record's removal).
RECORDED = tuple(p for p in Phase if p is not Phase.GONE)
# Phases in which something of the engine may be running (what a stop must look for).
MAY_RUN = frozenset({Phase.LAUNCHING, Phase.BOOTING, Phase.ACTIVE, Phase.SLEEPING, Phase.STOPPING, Phase.FAILED})
# Phases of an engine on its way or serving: the engine outrider's target follows (see outrider.target).
LIVE = frozenset({Phase.DOWNLOADING, Phase.LAUNCHING, Phase.BOOTING, Phase.ACTIVE, Phase.SLEEPING})
# How AIBrix's controller is shown a phase it does not know: a launch in progress is "booting", as AIBrix's own
# runtime reports an engine it has spawned.
SHOWN = {Phase.DOWNLOADING: "booting", Phase.LAUNCHING: "booting"}


class IllegalTransition(RuntimeError):
    """A transition the state machine does not allow: a bug in outrider, never the caller's doing."""

    def __init__(self, model: str, current: Phase, wanted: Phase) -> None:
        super().__init__(f"engine {model!r}: no transition from {current} to {wanted}")
        self.current = current
        self.wanted = wanted


def allowed(current: Phase, wanted: Phase) -> bool:
    return wanted in _ALLOWED[current]


def check(model: str, current: Phase, wanted: Phase) -> None:
    """Raise IllegalTransition unless `current -> wanted` is in the table."""
    if not allowed(current, wanted):
        raise IllegalTransition(model, current, wanted)


def shown(phase: Phase) -> str:
    return SHOWN.get(phase, phase.value)
