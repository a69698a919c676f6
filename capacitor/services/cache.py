"""The worklist answer cache: fresh answers save a round trip, stale ones cover outages.

An answer is the list of rows that the upstream returned for one query,
stored encoded so that every use decodes its own copy and rules never see a
row another request changed. Within ``worklistCacheSeconds`` the same query
from the same caller is answered from the cache. While the upstream is
unreachable, answers up to ``worklistStaleSeconds`` old are used: the one
for the same query if there is one, else every cached row of the node that
matches the query (PS3.4 C.2.2.2 matching).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from cachetools import TTLCache
from pydicom.dataset import Dataset

from capacitor.config.loader import Config
from capacitor.services import identifiers as ids
from capacitor.services.matching import matches

# Queries are keyed by the explicit VR little endian encoding of the identifier.
_KEY_ENCODING: ids.Encoding = (False, True)


@dataclass(frozen=True)
class CacheKey:
    """What makes two queries the same: node, caller when it matters, class and identifier."""

    node: str
    calling_ae: str
    sop_class: str
    digest: str


@dataclass(frozen=True)
class Answer:
    """The encoded rows of one upstream answer and when they were fetched."""

    rows: tuple[bytes, ...]
    encoding: ids.Encoding
    fetched_at: float

    def age(self) -> float:
        return time.monotonic() - self.fetched_at

    def datasets(self) -> list[Dataset]:
        return [ids.from_bytes(row, self.encoding) for row in self.rows]


class WorklistCache:
    """A thread-safe TTLCache of worklist answers that follows the settings in force."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: TTLCache[CacheKey, Answer] | None = None
        self._limits: tuple[float, float, int] = (0.0, 0.0, 0)

    def key(
        self, node: str, calling_ae: str, sop_class: str, query: Dataset
    ) -> CacheKey | None:
        """Return the key of `query`, or None when it cannot be encoded."""
        encoded = ids.to_bytes(query, _KEY_ENCODING)
        if encoded is None:
            return None
        return CacheKey(
            node, calling_ae, sop_class, hashlib.sha256(encoded).hexdigest()
        )

    def fresh(self, config: Config, key: CacheKey) -> Answer | None:
        """Return the answer for `key` if it is younger than worklistCacheSeconds."""
        with self._lock:
            answer = self._store(config).get(key)
        if answer is None or answer.age() > float(config["worklistCacheSeconds"]):
            return None
        return answer

    def put(
        self, config: Config, key: CacheKey, rows: list[Dataset], encoding: ids.Encoding
    ) -> None:
        encoded = [ids.to_bytes(row, encoding) for row in rows]
        if any(row is None for row in encoded):
            return
        answer = Answer(
            tuple(row for row in encoded if row is not None), encoding, time.monotonic()
        )
        with self._lock:
            store = self._store(config)
            if store.maxsize > 0:
                store[key] = answer

    def stale(
        self, config: Config, key: CacheKey, query: Dataset
    ) -> tuple[list[Dataset], float] | None:
        """Return rows for `query` no older than worklistStaleSeconds, and their age.

        Returns None when nothing cached is young enough.
        """
        limit = float(config["worklistStaleSeconds"])
        with self._lock:
            entries = list(self._store(config).items())
        usable = [(k, a) for k, a in entries if a.age() <= limit]
        for cached_key, answer in usable:
            if cached_key == key:
                return answer.datasets(), answer.age()
        related = [
            a
            for k, a in usable
            if (k.node, k.calling_ae, k.sop_class)
            == (key.node, key.calling_ae, key.sop_class)
        ]
        if not related:
            return None
        seen: set[bytes] = set()
        rows: list[Dataset] = []
        for answer in related:
            for encoded in answer.rows:
                row = ids.from_bytes(encoded, answer.encoding)
                if encoded not in seen and matches(row, query):
                    seen.add(encoded)
                    rows.append(row)
        return rows, max(a.age() for a in related)

    def _store(self, config: Config) -> TTLCache[CacheKey, Answer]:
        """Return the cache, made anew when the settings that size it change."""
        fresh = float(config["worklistCacheSeconds"])
        stale = float(config["worklistStaleSeconds"])
        size = int(config["worklistCacheMaxEntries"])
        if self._answers is None or self._limits != (fresh, stale, size):
            ttl = max(fresh, stale)
            self._answers = TTLCache(
                maxsize=size if ttl > 0 else 0,
                ttl=max(ttl, 0.001),
                timer=time.monotonic,
            )
            self._limits = (fresh, stale, size)
        return self._answers
