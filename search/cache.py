"""The evaluation cache of a job: every candidate is evaluated at most once.

Entries are keyed by ``Candidate.key()`` and remember the generation that first asked for them. Entries can be
pre-filled (e.g. from the database when a job resumes) without a generation; such an entry is *claimed* by the
first generation that asks for it, and only then counts as evaluated and appears in that generation's report —
so a resumed search reports exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from search.candidate import Candidate
from search.errors import InvalidCandidate
from search.evaluator import Evaluation


@dataclass
class CacheEntry:
    """One evaluated candidate; ``generation`` is None until a generation claims a pre-filled entry."""

    candidate: Candidate
    evaluation: Evaluation
    generation: int | None


class EvaluationCache:
    """``Candidate.key()`` → :class:`CacheEntry`."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CacheEntry | None:
        return self._entries.get(key)

    def add(self, candidate: Candidate, evaluation: Evaluation, generation: int | None) -> CacheEntry:
        """Store a new evaluation; the key must match the candidate and not be cached yet."""
        if evaluation.key != candidate.key():
            raise InvalidCandidate(f"evaluation key {evaluation.key} does not match candidate {candidate.key()}")
        if candidate.key() in self._entries:
            raise InvalidCandidate(f"candidate {candidate.key()} is already cached")
        entry = CacheEntry(candidate, evaluation, generation)
        self._entries[candidate.key()] = entry
        return entry

    def prefill(self, known: Iterable[tuple[Candidate, Evaluation]]) -> int:
        """Add already-known evaluations (unclaimed); returns how many were new."""
        added = 0
        for candidate, evaluation in known:
            if candidate.key() not in self._entries:
                self.add(candidate, evaluation, None)
                added += 1
        return added

    def claim(self, key: str, generation: int) -> bool:
        """Give an unclaimed entry to ``generation``; True when it was unclaimed."""
        entry = self._entries[key]
        if entry.generation is not None:
            return False
        entry.generation = generation
        return True

    def claimed(self) -> Iterator[CacheEntry]:
        """Entries that belong to a generation of this search, in insertion order."""
        return (e for e in self._entries.values() if e.generation is not None)

    @property
    def evaluated(self) -> int:
        """Evaluations that count against the job's evaluation budget (claimed entries)."""
        return sum(1 for _ in self.claimed())

    @property
    def failed(self) -> int:
        return sum(1 for e in self.claimed() if not e.evaluation.ok)
