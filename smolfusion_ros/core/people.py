"""Person analysis across frames: who is new, so the robot can greet them once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PersonUpdate:
    has_person: bool
    person_count: int
    new_person: bool


class PersonTracker:
    """Flags a new person when someone appears after the view was empty for `absence_s`
    seconds, or when more people are visible than before.

    Counting is the honest signal the offline detectors give (no identity): a person who
    steps out of view briefly (< absence_s) is not greeted twice.
    """

    def __init__(self, absence_s: float = 5.0) -> None:
        self._absence_s = absence_s
        self._count = 0
        self._last_seen: float | None = None

    def update(self, has_person: bool, person_count: int, now: float) -> PersonUpdate:
        count = max(person_count, 1) if has_person else 0
        new_person = False
        if count:
            away = self._last_seen is None or now - self._last_seen >= self._absence_s
            new_person = (self._count == 0 and away) or count > self._count > 0
            self._last_seen = now
        elif self._last_seen is not None and now - self._last_seen < self._absence_s:
            # Briefly lost: keep the previous count so a re-detection is not "new".
            return PersonUpdate(False, 0, False)
        self._count = count
        return PersonUpdate(bool(count), count, new_person)
