"""Multi-index hashing: the neighbours of 64-bit codes within a Hamming radius without comparing
all pairs (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index hashing",
CVPR 2012).

Each code is cut into m chunks of its bits, and each chunk keys a table of buckets. Two codes
within Hamming distance d differ in at most floor(d / m) bits of some chunk (pigeonhole: were every
chunk s + 1 or more bits apart, the codes would be m(s + 1) or more apart). A search therefore
looks, round s = 0, 1, 2, ..., at every bucket whose key is exactly s bits from the query's chunk;
after round s every code within m(s + 1) - 1 of the query has been met (the certified radius).
A query that asks for its k nearest stops at the first round whose certified radius holds k of
them: a near-copy is met in round 0 or 1, films that share their anatomy (many close neighbours)
stop early, and unrelated films (none) go on to the full radius, whose cost is the number of
buckets looked at, not the number of codes. Where codes crowd, buckets fill in proportion to the
collection, and so does the work per query (benchmarks/RESULTS.md: 10^5 phantoms in 12 s CPU).

Chunks take the bits dealt by measured entropy (most informative first, in turn), so that bits
that nearly every code shares (a perceptual hash of chest films has several) spread over the
chunks instead of making one chunk's buckets huge. The number of chunks is the one of least
estimated work for random codes (`chunks_for`), or, for a large index, of least work measured on
a sample of the queries (`HashIndex._choose_chunks`).

Ties at equal distance go to the smaller `tiebreak` value the caller gives, then to the smaller
owner (the codes' order), so results are reproducible.
A bucket holding more than `cap` codes is read only up to `cap` (its codes in owner order): a
query that meets one is counted in `capped`, its neighbours being the nearest of those read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["HashIndex", "SearchResult", "chunks_for", "popcount"]

MIN_CHUNKS = 3          # so a chunk's table has at most 2^22 + 1 offsets (int32: 16 MiB)
LOOKUP_COST = 4         # one bucket lookup, in codes read (chunks_for)
GATHER = 1 << 22        # bucket entries read at once (memory: a few arrays of this length)
QUERY_BLOCK = 4096      # queries searched together (the top-k lists are merged per block)
TRIAL_MIN_CODES = 50_000  # from this index size the chunk count is chosen by trial (_choose_chunks)
TRIAL_QUERIES = 512
TRIAL_CHUNKS = (3, 4, 5, 6)
_OWNER_BITS = 28        # sort keys pack (query in its block, owner, distance) into one int64


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64, as int16."""
    return _popcount8(x).astype(np.int16)


def _popcount8(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return np.unpackbits(np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1, dtype=np.uint8)


@dataclass
class SearchResult:
    """Neighbours found, one row each, sorted by query, then distance, then owner."""

    query: np.ndarray       # int64: position of the query in the queries searched
    owner: np.ndarray       # int64: the neighbour (owner of the nearest of its codes)
    distance: np.ndarray    # int16: Hamming distance to that code
    full: int = 0           # queries that found k neighbours (more may lie within the radius)
    capped: int = 0         # queries that met a bucket larger than `cap` (module docstring)


class _Ask(NamedTuple):
    chunks: int
    radius: int
    k: int | None
    cap: int | None
    tiebreak: Callable | None


class _Tally:
    """What a block's search met: queries that hit an oversized bucket, and the work done."""

    def __init__(self, n_queries: int):
        self.capped = np.zeros(n_queries, bool)
        self.work = 0   # bucket lookups * LOOKUP_COST + entries read


class HashIndex:
    """Codes (uint64) with owners (int); several codes may share an owner (one image's windows).

    Args:
        codes: (M,) uint64.
        owners: (M,) ints in [0, 2^28); default: each code its own owner (0..M-1).
        chunks: m, the number of chunks; default: chosen per search (`_choose_chunks`). Tables
            are built on first use.
    """

    def __init__(self, codes: np.ndarray, owners: np.ndarray | None = None, chunks: int | None = None):
        self.codes = np.ascontiguousarray(codes, dtype=np.uint64).ravel()
        n = len(self.codes)
        self.owners = np.arange(n, dtype=np.int64) if owners is None else np.asarray(owners, dtype=np.int64).ravel()
        if len(self.owners) != n:
            raise ValueError(f"{n} codes but {len(self.owners)} owners")
        if n and (self.owners.min() < 0 or self.owners.max() >= 1 << _OWNER_BITS):
            raise ValueError(f"owners must lie in [0, 2^{_OWNER_BITS})")
        if chunks is not None and not MIN_CHUNKS <= chunks <= 64:
            raise ValueError(f"chunks must be between {MIN_CHUNKS} and 64, got {chunks}")
        self.chunks = chunks
        self._built: dict[int, tuple[list[np.ndarray], list[tuple]]] = {}

    def tables(self, m: int) -> tuple[list[np.ndarray], list[tuple]]:
        """(bit positions of each chunk, each chunk's table), built once per m."""
        if m not in self._built:
            bits = _deal_bits(self.codes, m)
            self._built[m] = bits, [_table(self.codes, self.owners, _keys(self.codes, b), len(b)) for b in bits]
        return self._built[m]

    def search(self, queries: np.ndarray, radius: int, k: int | None = None, exclude: np.ndarray | None = None,
               cap: int | None = None, tiebreak: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> SearchResult:
        """Owners within `radius` of each query; with k, only the k nearest of each.

        Args:
            queries: (Q,) uint64.
            radius: largest Hamming distance kept (0-64).
            k: neighbours kept per query, nearest first; None = all.
            exclude: (Q,) the owner each query leaves out (itself), or None.
            cap: bucket entries read per lookup (module docstring); None = all.
            tiebreak: (query positions, owners) -> ints: among neighbours at one distance the
                smaller value comes first, then the smaller owner.
        """
        queries = np.ascontiguousarray(queries, dtype=np.uint64).ravel()
        exclude = np.full(len(queries), -1, np.int64) if exclude is None else np.asarray(exclude, np.int64).ravel()
        if not 0 <= radius <= 64:
            raise ValueError(f"radius must be 0-64, got {radius}")
        ask = _Ask(self.chunks or 0, radius, k, cap, tiebreak)
        ask = ask._replace(chunks=ask.chunks or self._choose_chunks(ask, queries, exclude))
        parts, full, capped = [], 0, 0
        for s in range(0, len(queries), QUERY_BLOCK):
            positions = np.arange(s, min(s + QUERY_BLOCK, len(queries)))
            q, o, d, f, tally = self._search_block(ask, queries[positions], exclude[positions], positions)
            parts.append((q + s, o, d))
            full, capped = full + f, capped + int(tally.capped.sum())
        if not parts:
            return SearchResult(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16))
        q, o, d = (np.concatenate(x) for x in zip(*parts))
        order = np.lexsort((o, d, q))
        return SearchResult(q[order], o[order], d[order], full, capped)

    def _choose_chunks(self, ask: _Ask, queries: np.ndarray, exclude: np.ndarray) -> int:
        """The m for this search: `chunks_for` (random codes) for a small index; for a large one,
        the m of least work on a sample of the queries, since codes that crowd together (films
        sharing their anatomy) fill some buckets thousands of times more than random codes would:
        for 10^5 phantoms at 64 px m = 3 took a third of m = 4's time (47 s and 147 s CPU, before
        the reading was bounded by each query's k-th), for 10^5 random codes m = 4 about a sixth
        of m = 3's."""
        guess = chunks_for(len(self.codes), ask.radius)
        if len(self.codes) < TRIAL_MIN_CODES or len(queries) < 4 * TRIAL_QUERIES:
            return guess
        sample = np.linspace(0, len(queries) - 1, TRIAL_QUERIES).astype(np.int64)
        work = {}
        for m in sorted({guess, *TRIAL_CHUNKS}):
            work[m] = self._search_block(ask._replace(chunks=m), queries[sample], exclude[sample], sample)[4].work
        best = min(work, key=lambda m: (work[m], m))
        for m in work:
            if m != best:
                self._built.pop(m, None)
        return best

    def _search_block(self, ask: _Ask, queries: np.ndarray, exclude: np.ndarray, positions: np.ndarray):
        m, radius, k = ask.chunks, ask.radius, ask.k
        chunk_bits, tables = self.tables(m)
        rank = None if ask.tiebreak is None else (lambda q, o: ask.tiebreak(positions[q], o))
        qkeys = [_keys(queries, bits) for bits in chunk_bits]
        found = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16))
        limit = np.full(len(queries), radius)     # a query with k found needs nothing farther than its k-th
        active = np.arange(len(queries))
        tally = _Tally(len(queries))
        last_round = -(-(radius + 1) // m) - 1   # the first round whose certified radius covers `radius`
        for s in range(last_round + 1):
            for c, table in enumerate(tables):
                nbits = len(chunk_bits[c])
                if s > nbits:
                    continue
                parts = [found]
                for lq, owner, d in _probe(table, qkeys[c], queries, active, _masks(nbits, s), limit, ask.cap, tally):
                    keep = owner != exclude[lq]
                    parts.append((lq[keep], owner[keep], d[keep]))
                    if len(parts) > 8:  # keep memory to about the k nearest per query
                        parts = [_nearest(*(np.concatenate(x) for x in zip(*parts)), k, rank)]
                found = _nearest(*(np.concatenate(x) for x in zip(*parts)), k, rank)
                if k is not None:
                    full = np.bincount(found[0], minlength=len(queries)) >= k
                    farthest = np.zeros(len(queries), np.int64)
                    np.maximum.at(farthest, found[0], found[2])
                    limit = np.where(full, farthest, radius)
            if k is not None:  # a query whose k nearest lie within the certified radius is done
                certified = m * (s + 1) - 1
                have = np.bincount(found[0][found[2] <= certified], minlength=len(queries))
                active = active[have[active] < k]
                if not len(active):
                    break
        q, o, d = found
        full = 0 if k is None else int((np.bincount(q, minlength=len(queries)) >= k).sum())
        return q, o, d, full, tally


def chunks_for(n_codes: int, radius: int) -> int:
    """The chunk count m of least estimated work per query: each round s looks up C(b, s) buckets
    of each b-bit chunk, each holding about n_codes / 2^b codes (random codes), until the
    certified radius m(s + 1) - 1 reaches `radius`. A lookup (reading two offsets far apart in a
    table of 2^b) costs about LOOKUP_COST codes read in sequence (measured on 10^5 random codes)."""
    def work(m: int) -> float:
        sizes = [64 // m + (c < 64 % m) for c in range(m)]
        rounds = -(-(radius + 1) // m)
        return sum(comb(b, s) * (LOOKUP_COST + n_codes / 2**b) for b in sizes for s in range(min(rounds, b + 1)))
    return min(range(MIN_CHUNKS, 65), key=work)


def _deal_bits(codes: np.ndarray, m: int) -> list[np.ndarray]:
    """Bit positions of each chunk: bits by falling entropy (then position), dealt back and forth."""
    sample = codes[:: max(1, len(codes) // 100_000)]
    p = ((sample[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(0) if len(sample) else np.full(64, 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(p * np.log2(p)) - np.nan_to_num((1 - p) * np.log2(1 - p))
    ranked = np.lexsort((np.arange(64), -entropy))
    deal = np.r_[np.arange(m), np.arange(m)[::-1]]  # 0 1 2 2 1 0 0 1 2 ...: balanced entropy per chunk
    chunk = deal[np.arange(64) % (2 * m)]
    return [np.sort(ranked[chunk == c]) for c in range(m)]


def _keys(codes: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The chunk's bits of each code gathered into one int64 key."""
    key = np.zeros(len(codes), np.uint64)
    for pos, b in enumerate(bits):
        key |= ((codes >> np.uint64(b)) & np.uint64(1)) << np.uint64(pos)
    return key.astype(np.int64)


def _table(codes: np.ndarray, owners: np.ndarray, keys: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, owners, offsets) in bucket order: bucket b holds entries offsets[b]:offsets[b + 1],
    in their original order (a bucket is read as one contiguous run)."""
    order = np.argsort(keys, kind="stable")
    offsets = np.r_[0, np.cumsum(np.bincount(keys, minlength=1 << nbits))]
    return codes[order], owners[order], offsets.astype(np.int32 if len(keys) < 2**31 else np.int64)


@lru_cache(maxsize=None)
def _masks(nbits: int, s: int) -> np.ndarray:
    """Every nbits-bit key with exactly s bits set."""
    if s == 0:
        return np.zeros(1, np.int64)
    return np.array([sum(1 << b for b in c) for c in combinations(range(nbits), s)], np.int64)


def _probe(table: tuple, qkeys: np.ndarray, queries: np.ndarray, active: np.ndarray, masks: np.ndarray, limit: np.ndarray,
           cap: int | None, tally: _Tally):
    """Yield (query, owner, distance) of the codes within each query's `limit` in every bucket the active
    queries look up (their chunk key XOR each mask), reading at most GATHER entries a time (whole
    queries per batch); notes in `tally` the work and the queries that met a bucket over `cap`."""
    if not len(active):
        return
    codes, owners, offsets = table
    n_masks = len(masks)
    lookup = (qkeys[active, None] ^ masks[None, :]).ravel()               # (A * n_masks,), query-major
    start = offsets[lookup].astype(np.int64)
    count = offsets[lookup + 1].astype(np.int64) - start
    if cap is not None:
        tally.capped[active[np.flatnonzero(count > cap) // n_masks]] = True
        count = np.minimum(count, cap)
    tally.work += len(lookup) * LOOKUP_COST + int(count.sum())
    per_query = count.reshape(len(active), n_masks).sum(1)
    batch = np.cumsum(per_query) // GATHER
    bounds = np.r_[0, np.flatnonzero(np.diff(batch)) + 1, len(active)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        c = count[a * n_masks:b * n_masks]
        total = int(c.sum())
        if not total:
            continue
        # Position of every entry read: each lookup's bucket is a contiguous run from its start.
        pos = np.repeat(start[a * n_masks:b * n_masks] - (np.cumsum(c) - c), c) + np.arange(total)
        d = _popcount8(codes[pos] ^ np.repeat(queries[active[a:b]], per_query[a:b]))
        hit = np.flatnonzero(d <= np.repeat(limit[active[a:b]], per_query[a:b]))
        if len(hit):
            lq = active[a + np.searchsorted(np.cumsum(per_query[a:b]), hit, side="right")]
            yield lq, owners[pos[hit]], d[hit].astype(np.int16)


def _nearest(q: np.ndarray, owner: np.ndarray, d: np.ndarray, k: int | None, rank: Callable | None):
    """One row per (query, owner) at its smallest distance; with k, only each query's k first by
    (distance, rank, owner). `rank` is asked only about the neighbours tied at a query's k-th
    distance (in films that share their anatomy, a small part of those met)."""
    if not len(q):
        return q, owner, d
    key = np.sort((q << (_OWNER_BITS + 7)) | (owner << 7) | d.astype(np.int64))
    key = key[np.r_[True, (key[1:] >> 7) != (key[:-1] >> 7)]]                # smallest distance per pair
    q, owner, d = key >> (_OWNER_BITS + 7), (key >> 7) & ((1 << _OWNER_BITS) - 1), key & 127
    if k is None:
        return q, owner, d.astype(np.int16)
    hist = np.bincount(q * 65 + d, minlength=(int(q.max()) + 1) * 65).reshape(-1, 65)   # (queries, distance)
    cum = hist.cumsum(1)
    kth = (cum < k).sum(1)                       # the distance of each query's k-th; 65: fewer than k
    below = np.where(kth > 0, np.take_along_axis(cum, np.maximum(kth - 1, 0)[:, None], 1)[:, 0], 0)
    keep = d < kth[q]
    tied = np.flatnonzero(d == kth[q])
    if len(tied):
        t = np.zeros(len(tied), np.int64) if rank is None else np.asarray(rank(q[tied], owner[tied]), np.int64)
        order = np.lexsort((owner[tied], t, q[tied]))
        tq = q[tied][order]
        starts = np.r_[0, np.flatnonzero(np.diff(tq)) + 1]
        place = np.arange(len(tq)) - np.repeat(starts, np.diff(np.r_[starts, len(tq)]))
        keep[tied[order][place < (k - below)[tq]]] = True
    return q[keep], owner[keep], d[keep].astype(np.int16)
