"""Canonical Huffman codes: built from symbol frequencies, packed into bytes, decoded exactly.

Huffman (1952) merges the two least frequent subtrees until one tree is left; a symbol's code
length is its depth, and no prefix-free code spends fewer bits on the frequencies it was built
from. Only the lengths are kept: the *canonical* code assigns the codes in order of
``(length, symbol)``, each the previous code plus one, shifted left whenever the length grows.
So a code is fully described by its lengths, which is all a file needs to store.

Bits are packed most significant first (``numpy.packbits`` order); the last byte is padded with
zero bits. Decoding needs the number of symbols, since padding could otherwise read as symbols.

A one-symbol alphabet gets a one-bit code (``0``), so every symbol costs at least one bit and a
stream of ``n`` such symbols has ``n`` bits, as in DEFLATE.

Decoding is vectorised: for every bit position the next ``max_length`` bits are read as one
integer; because canonical codes, left-aligned, increase with their rank, a binary search over
the per-length limits gives the code length (and hence the symbol) at every position at once.
Only the hop from one code to the next is a plain loop. Codes longer than 57 bits are refused
(they need more than ``2**57`` symbols' worth of skewed frequencies to arise).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from prunekit.errors import ConfigError

MAX_LENGTH = 57
_CHUNK_BITS = 1 << 20

__all__ = ["MAX_LENGTH", "HuffmanCode", "code_lengths", "frequencies"]


def frequencies(symbols: Iterable[Hashable]) -> dict[Any, int]:
    """How often each symbol occurs (an int array is counted with ``numpy.unique``)."""
    if isinstance(symbols, np.ndarray):
        values, counts = np.unique(symbols, return_counts=True)
        return {v.item(): int(c) for v, c in zip(values, counts, strict=True)}
    return dict(Counter(symbols))


def code_lengths(freqs: Mapping[Any, int]) -> dict[Any, int]:
    """Optimal (Huffman) code length of every symbol with a positive frequency.

    Ties are broken by insertion order, so the result is deterministic. Symbols of frequency 0
    get no code; a single symbol gets length 1.
    """
    for sym, f in freqs.items():
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
            raise ConfigError(f"frequency of symbol {sym!r} must be an integer >= 0, got {f!r}")
    used = [(int(f), sym) for sym, f in freqs.items() if f > 0]
    if not used:
        return {}
    if len(used) == 1:
        return {used[0][1]: 1}
    tie = itertools.count()
    # a heap entry: (weight, tiebreak, symbols under this subtree)
    heap: list[tuple[int, int, list[Any]]] = [(f, next(tie), [sym]) for f, sym in used]
    heapq.heapify(heap)
    depth = {sym: 0 for _, sym in used}
    while len(heap) > 1:
        f1, _, s1 = heapq.heappop(heap)
        f2, _, s2 = heapq.heappop(heap)
        for sym in itertools.chain(s1, s2):
            depth[sym] += 1  # every merge pushes both subtrees one level down
        heapq.heappush(heap, (f1 + f2, next(tie), s1 + s2))
    return depth


def _sort_key(sym: Any) -> tuple[str, Any]:
    """Symbols of one alphabet are ordered among themselves; the type name keeps mixed ones apart."""
    return (type(sym).__name__, sym)


class HuffmanCode:
    """A canonical prefix code given by its code lengths (``symbol -> bits``).

    ``HuffmanCode.from_frequencies(freqs)`` builds the optimal one; ``HuffmanCode(lengths)``
    rebuilds it from stored lengths (checked: positive, at most :data:`MAX_LENGTH`, Kraft sum at
    most 1, so the code is prefix-free).
    """

    def __init__(self, lengths: Mapping[Any, int]) -> None:
        for sym, n in lengths.items():
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
                raise ConfigError(f"code length of symbol {sym!r} must be an integer, got {n!r}")
            if not 1 <= n <= MAX_LENGTH:
                raise ConfigError(
                    f"code length of symbol {sym!r} must be in [1, {MAX_LENGTH}], got {n}"
                )
        if sum(Fraction(1, 2 ** int(n)) for n in lengths.values()) > 1:
            raise ConfigError("code lengths break the Kraft inequality: not a prefix code")
        self.lengths: dict[Any, int] = {s: int(n) for s, n in lengths.items()}
        # canonical order: by length, then symbol
        self.symbols: list[Any] = sorted(
            self.lengths, key=lambda s: (self.lengths[s], _sort_key(s))
        )
        self.codes: dict[Any, int] = {}
        code, prev = 0, 0
        for sym in self.symbols:
            n = self.lengths[sym]
            code <<= n - prev
            self.codes[sym] = code
            code, prev = code + 1, n
        self.max_length = max(self.lengths.values(), default=0)
        self._rank = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_frequencies(cls, freqs: Mapping[Any, int]) -> HuffmanCode:
        return cls(code_lengths(freqs))

    @classmethod
    def for_symbols(cls, symbols: Iterable[Hashable]) -> HuffmanCode:
        """The optimal code for the given sequence."""
        return cls.from_frequencies(frequencies(symbols))

    def __repr__(self) -> str:
        return f"HuffmanCode({len(self.lengths)} symbols, max length {self.max_length})"

    def code_string(self, sym: Any) -> str:
        """``sym``'s code as a string of ``0``/``1``."""
        return format(self.codes[sym], f"0{self.lengths[sym]}b")

    def _ranks(self, seq: Sequence[Any] | np.ndarray) -> np.ndarray:
        if isinstance(seq, np.ndarray) and seq.dtype.kind in "iu" and self.symbols:
            if not all(isinstance(s, int) for s in self.symbols):
                raise ConfigError("an integer array needs a code over integer symbols")
            lo, hi = min(self.symbols), max(self.symbols)
            flat = seq.reshape(-1).astype(np.int64)
            if flat.size and (flat.min() < lo or flat.max() > hi):
                bad = flat[(flat < lo) | (flat > hi)][0]
                raise ConfigError(f"symbol {int(bad)} has no code (outside [{lo}, {hi}])")
            lut = np.full(hi - lo + 1, -1, dtype=np.int64)
            for s, r in self._rank.items():
                lut[s - lo] = r
            ranks = lut[flat - lo]
            if flat.size and ranks.min() < 0:
                bad = flat[ranks < 0][0]
                raise ConfigError(f"symbol {int(bad)!r} has no code")
            return ranks
        try:
            return np.fromiter((self._rank[s] for s in seq), dtype=np.int64)
        except KeyError as e:
            raise ConfigError(f"symbol {e.args[0]!r} has no code") from None

    def bit_length(self, seq: Sequence[Any] | np.ndarray) -> int:
        """Bits that encoding ``seq`` takes (before padding to a byte)."""
        lens = np.array([self.lengths[s] for s in self.symbols], dtype=np.int64)
        return int(lens[self._ranks(seq)].sum())

    def encode(self, seq: Sequence[Any] | np.ndarray) -> bytes:
        """``seq`` as concatenated codes, most significant bit first, zero-padded to a byte."""
        ranks = self._ranks(seq)
        if ranks.size == 0:
            return b""
        codes = np.array([self.codes[s] for s in self.symbols], dtype=np.uint64)[ranks]
        lens = np.array([self.lengths[s] for s in self.symbols], dtype=np.int64)[ranks]
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        bits = np.zeros(int(lens.sum()), dtype=np.uint8)
        for j in range(int(lens.max())):  # bit j of every code that has one
            has = lens > j
            shift = (lens[has] - 1 - j).astype(np.uint64)
            bits[starts[has] + j] = ((codes[has] >> shift) & np.uint64(1)).astype(np.uint8)
        return np.packbits(bits).tobytes()

    def decode(self, data: bytes, count: int) -> list[Any] | np.ndarray:
        """The first ``count`` symbols coded in ``data`` (an int64 array for integer symbols).

        Raises ``ValueError`` if the bits run out or match no code (a corrupt stream).
        """
        if count < 0:
            raise ValueError(f"symbol count must be >= 0, got {count}")
        ints = all(isinstance(s, int) and not isinstance(s, bool) for s in self.symbols)
        if count == 0:
            return np.zeros(0, dtype=np.int64) if ints else []
        if not self.symbols:
            raise ValueError("an empty code cannot decode symbols")
        ranks = self._decode_ranks(np.frombuffer(data, dtype=np.uint8), count)
        if ints:
            return np.array(self.symbols, dtype=np.int64)[ranks]
        return [self.symbols[r] for r in ranks.tolist()]

    def _decode_ranks(self, raw: np.ndarray, count: int) -> np.ndarray:
        width = self.max_length
        lens_by_rank = np.array([self.lengths[s] for s in self.symbols], dtype=np.int64)
        # per length n: codes of length n are first[n] .. first[n] + cnt[n] - 1, with ranks from
        # offset[n]; left-aligned to ``width`` bits they end below limit[n]
        present = sorted(set(lens_by_rank.tolist()))
        first = {n: self.codes[self.symbols[int(np.argmax(lens_by_rank == n))]] for n in present}
        cnt = {n: int((lens_by_rank == n).sum()) for n in present}
        offset = {n: int(np.argmax(lens_by_rank == n)) for n in present}
        limits = np.array([(first[n] + cnt[n]) << (width - n) for n in present], dtype=np.uint64)
        lens_arr = np.array(present, dtype=np.int64)
        first_arr = np.array([first[n] for n in present], dtype=np.int64)
        off_arr = np.array([offset[n] for n in present], dtype=np.int64)

        bits = np.unpackbits(raw)
        total = bits.size
        bits = np.concatenate((bits, np.zeros(width, dtype=np.uint8)))  # reads past the end
        out = np.empty(count, dtype=np.int64)
        done, pos = 0, 0
        while done < count:
            if pos >= total:
                raise ValueError(f"bit stream ends after {done} of {count} symbols")
            stop = min(pos + _CHUNK_BITS, total)
            n = stop - pos
            window = np.zeros(n, dtype=np.uint64)
            for j in range(width):
                window = (window << np.uint64(1)) | bits[pos + j : stop + j].astype(np.uint64)
            which = np.searchsorted(limits, window, side="right")
            valid = which < len(present)
            which = np.minimum(which, len(present) - 1)
            length = lens_arr[which]
            value = (window >> (width - length).astype(np.uint64)).astype(np.int64)
            rank = off_arr[which] + value - first_arr[which]
            step = np.where(valid, length, 0).tolist()
            rank_l = rank.tolist()
            p = 0
            while p < n and done < count:
                s = step[p]
                if s == 0:
                    raise ValueError(f"bits at position {pos + p} match no code")
                out[done] = rank_l[p]
                done += 1
                p += s
            pos += p
        if pos > total:
            raise ValueError(f"bit stream ends inside symbol {count}")
        return out
