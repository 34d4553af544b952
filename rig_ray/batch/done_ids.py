"""What an output folder holds, by row id, kept compactly for jobs of millions of rows.

A resumed job's driver needs, for every input row, the generation indices its output folder
already holds. As Python dicts that costs about 200 bytes an id; here the ids are one Arrow
string array beside two numpy arrays: each id's 64-bit hash (sorted) and its bitmask. A block
of ids is looked up at once: hashes found by binary search, then the ids compared, so a hash
shared by two ids never mixes them up. The folder's rows are grouped the same way, by sorting
their hashes. Ids whose hash another id shares, and generation indices past 62, are kept in a
plain dict instead: rare, and exact either way.
"""

from __future__ import annotations

import typing as t

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_LOW_BITS = 63
"""Generation indices below this are bits of an int64 mask; the rest go to the dict."""
_SLICE = 1 << 16
"""Ids hashed at a time: only that many are Python strings at once."""
_hash: t.Callable[[str], int] = hash
"""The ids' hash (Python's: the same for the life of this process, which is all it needs)."""


class Masks:
    """A map of row id -> bitmask of generation indices (bit i: index i), read-only.

    `ids`, `hashes` and `masks` are parallel, sorted by hash, with no hash twice; `exact`
    holds what they cannot (ids of a shared hash, indices past 62), or'ed into a lookup."""

    def __init__(
        self,
        ids: pa.Array | None = None,
        hashes: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        exact: dict[str, int] | None = None,
    ) -> None:
        self._ids = ids if ids is not None else pa.array([], pa.string())
        self._hashes = hashes if hashes is not None else np.zeros(0, np.int64)
        self._masks = masks if masks is not None else np.zeros(0, np.int64)
        self._exact = exact or {}

    @classmethod
    def of_mapping(cls, mapping: t.Mapping[str, int]) -> Masks:
        return cls(exact=dict(mapping))

    @classmethod
    def merged(cls, first: Masks, second: Masks) -> Masks:
        """Each id's bits in either."""
        hashes = np.concatenate([first._hashes, second._hashes])
        order = np.argsort(hashes, kind="stable")
        ids = pa.concat_arrays([first._ids, second._ids]).take(pa.array(order))
        hashes, masks = hashes[order], np.concatenate([first._masks, second._masks])[order]
        exact = dict(first._exact)
        for row_id, mask in second._exact.items():
            exact[row_id] = exact.get(row_id, 0) | mask
        clash = _clashing(ids, hashes)
        if len(clash):  # two ids of one hash: by id, in the dict
            odd = np.isin(hashes, clash)
            for row_id, mask in zip(
                ids.filter(pa.array(odd)).to_pylist(), masks[odd].tolist(), strict=True
            ):
                exact[row_id] = exact.get(row_id, 0) | mask
            ids, hashes, masks = ids.filter(pa.array(~odd)), hashes[~odd], masks[~odd]
        starts = _starts(hashes)
        joined = np.bitwise_or.reduceat(masks, starts) if len(starts) else masks
        return cls(ids.take(pa.array(starts)), hashes[starts], joined, exact)

    def masks(self, ids: pa.Array | t.Sequence[str]) -> list[int]:
        """The mask of each of `ids` (an Arrow string array, or strings; 0 for an id not
        held), in order."""
        found = np.zeros(len(ids), dtype=np.int64)
        if not len(self._hashes) and not self._exact:
            return found.tolist()  # a fresh folder: nothing to look up
        column = ids if isinstance(ids, pa.Array) else pa.array(ids, type=pa.string())
        if len(self._hashes) and len(column):
            asked = _hashes(column)
            order = np.argsort(asked)  # searched in order, the search runs 3x faster
            at = np.empty(len(asked), dtype=np.int64)
            at[order] = np.searchsorted(self._hashes, asked[order])
            at = np.minimum(at, len(self._hashes) - 1)
            hit = np.nonzero(self._hashes[at] == asked)[0]
            if len(hit):
                rows = pa.array(hit)
                same = pc.equal(self._ids.take(pa.array(at[hit])), column.take(rows))
                hit = hit[same.to_numpy(zero_copy_only=False)]
                found[hit] = self._masks[at[hit]]
        out: list[int] = found.tolist()
        if self._exact:
            for number, row_id in enumerate(column.to_pylist()):
                out[number] |= self._exact.get(row_id, 0)
        return out

    def get(self, row_id: str, default: int = 0) -> int:
        return self.masks([row_id])[0] or default

    def items(self) -> t.Iterator[tuple[str, int]]:
        merged = dict(zip(self._ids.to_pylist(), self._masks.tolist(), strict=True))
        for row_id, mask in self._exact.items():
            merged[row_id] = merged.get(row_id, 0) | mask
        yield from ((row_id, mask) for row_id, mask in merged.items() if mask)

    def __bool__(self) -> bool:
        return bool(np.any(self._masks)) or any(self._exact.values())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Masks | dict):
            mine, theirs = dict(self.items()), dict(other.items())
            return mine == {row_id: mask for row_id, mask in theirs.items() if mask}
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class Scan:
    """Which generations an output folder holds: `done` (id -> mask of the generation indices
    with a row that succeeded), `failed` (with only failed rows) and the `repeated` keys
    (id, index) with more than one row. Rows without a generation index a run makes (null or
    below 0: written by some other tool) are left alone.

    The rows are sorted by (hash of id, index), so each key's rows are side by side and each
    id's keys too. Rows of an id whose hash another id shares, or of an index past 62, follow
    the same rule one by one in Python."""

    def __init__(self, parts: t.Iterable[pa.Table] = ()) -> None:
        """`parts`: tables of the folder's `id`, `generation_index` and `error` columns."""
        ids: list[pa.Array] = []
        indices: list[np.ndarray] = []
        oks: list[np.ndarray] = []
        for table in parts:  # only the rows a run makes, each part's as it is read
            index = pc.cast(table.column("generation_index"), pa.int64())
            valid = pc.fill_null(pc.greater_equal(index, 0), False)
            ids.append(pc.cast(table.column("id").filter(valid), pa.string()).combine_chunks())
            indices.append(np.asarray(index.filter(valid).to_numpy(), dtype=np.int64))
            oks.append(np.asarray(pc.is_null(table.column("error").filter(valid)).to_numpy()))
        row_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
        index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        good = np.concatenate(oks) if oks else np.zeros(0, bool)
        del ids, indices, oks
        hashes = _hashes(row_ids)
        order = np.lexsort((index, hashes))
        row_ids = row_ids.take(pa.array(order))
        hashes, index, good = hashes[order], index[order], good[order]
        done: dict[str, int] = {}
        failed: dict[str, int] = {}
        self.repeated: set[tuple[str, int]] = set()
        odd = (index >= _LOW_BITS) | np.isin(hashes, _clashing(row_ids, hashes))
        if odd.any():
            odd_ids = row_ids.filter(pa.array(odd)).to_pylist()
            odd_rows = zip(odd_ids, index[odd].tolist(), good[odd].tolist(), strict=True)
            _add_rows(odd_rows, done, failed, self.repeated)
            keep = pa.array(~odd)
            row_ids, hashes, index, good = (
                row_ids.filter(keep),
                hashes[~odd],
                index[~odd],
                good[~odd],
            )
        keys = _starts(hashes, index)  # where each (id, index) starts
        counts = np.diff(np.append(keys, len(index)))
        for at in keys[counts > 1].tolist():
            self.repeated.add((row_ids[at].as_py(), int(index[at])))
        key_ok = np.logical_or.reduceat(good, keys) if len(keys) else good
        self.done = _masks(row_ids, hashes, index, keys[key_ok], done)
        self.failed = _masks(row_ids, hashes, index, keys[~key_ok], failed)
        self._failed = int((~key_ok).sum()) + _bits(failed)
        self._generations = len(keys) + _bits(done) + _bits(failed)

    def is_done(self, row_id: str, index: int) -> bool:
        return bool(self.done.get(row_id) >> index & 1)

    def failed_count(self) -> int:
        return self._failed

    def generations(self) -> int:
        return self._generations

    def finished(self, *, retry_failed: bool) -> Masks:
        """id -> generation indices not to make again: the succeeded ones, and the failed
        ones too unless they are retried."""
        if retry_failed or not self._failed:
            return self.done
        return Masks.merged(self.done, self.failed)


def _add_rows(
    rows: t.Iterable[tuple[str, int, bool]],
    done: dict[str, int],
    failed: dict[str, int],
    repeated: set[tuple[str, int]],
) -> None:
    """The rule, a row at a time: a key is done once a row of it succeeded, else failed, and
    repeated once it has a second row."""
    for row_id, index, ok in rows:
        bit = 1 << index
        if (done.get(row_id, 0) | failed.get(row_id, 0)) & bit:
            repeated.add((row_id, index))
        if ok:
            done[row_id] = done.get(row_id, 0) | bit
            failed[row_id] = failed.get(row_id, 0) & ~bit
        elif not done.get(row_id, 0) & bit:
            failed[row_id] = failed.get(row_id, 0) | bit


def _masks(
    ids: pa.Array, hashes: np.ndarray, index: np.ndarray, keys: np.ndarray, exact: dict[str, int]
) -> Masks:
    """The masks of the keys starting at rows `keys` (rows sorted by hash, then index)."""
    key_hashes = hashes[keys]
    starts = _starts(key_hashes)  # where each id's keys start
    bits = np.left_shift(np.int64(1), index[keys])
    masks = np.bitwise_or.reduceat(bits, starts) if len(starts) else bits
    return Masks(ids.take(pa.array(keys[starts])), key_hashes[starts], masks, exact)


def _starts(*columns: np.ndarray) -> np.ndarray:
    """Where each run of rows equal in every one of `columns` starts."""
    change = np.zeros(len(columns[0]), dtype=bool)
    if len(change):
        change[0] = True
    for column in columns:
        change[1:] |= column[1:] != column[:-1]
    return np.nonzero(change)[0]


def _clashing(ids: pa.Array, hashes: np.ndarray) -> np.ndarray:
    """The hashes that two different ids share, of rows sorted by hash."""
    same = np.nonzero(hashes[1:] == hashes[:-1])[0]
    if not len(same):
        return same
    left, right = ids.take(pa.array(same)), ids.take(pa.array(same + 1))
    differ = ~pc.equal(left, right).to_numpy(zero_copy_only=False)
    return np.unique(hashes[same[differ]])


def _bits(masks: dict[str, int]) -> int:
    return sum(mask.bit_count() for mask in masks.values())


def _hashes(ids: pa.Array) -> np.ndarray:
    """Each id's hash (Python's, as this process computes it), a slice of ids at a time."""
    out = np.empty(len(ids), dtype=np.int64)
    for start in range(0, len(ids), _SLICE):
        chunk = ids.slice(start, _SLICE).to_pylist()
        out[start : start + len(chunk)] = np.fromiter(map(_hash, chunk), np.int64, len(chunk))
    return out
