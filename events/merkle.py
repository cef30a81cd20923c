"""RFC 9162 §2.1 Merkle Tree Hash over one ledger partition, kept incrementally.

    MTH({})      = SHA-256()                                  (the empty string)
    MTH({d0})    = SHA-256(0x00 || d0)                        leaf hash
    MTH(D[n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  node hash,
                   k = the largest power of two < n

In TenSafe the leaf data ``d_i`` of a partition's tree is the 32-byte chain hash of
the event with ``seq == i`` (``tensafe.events.chain``), so the leaf index *is* the
seq. The spec lives in docs/MERKLE.md; verification (which needs nothing but
SHA-256) lives in ``tensafe.events.proofs``.

``MerkleTree`` stores every *completed perfect subtree* (aligned ranges of 2^h
leaves), level by level, 32 bytes each in one ``bytearray`` per level. That is
< 2n hashes (~64 MB for 10^6 leaves) and makes every historical root and every
proof a handful of O(1) lookups: any node of the tree of *any* size <= n is either
such a perfect subtree or a fold of O(log n) of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from tensafe.events.proofs import consistency_path, inclusion_path

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
]

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the domain prefix keeps a leaf from posing as a node."""
    return _sha256(LEAF_PREFIX + _as_bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(NODE_PREFIX + left + right).digest()


class MerkleTree:
    """Append-only RFC 9162 tree with O(1)-amortised appends and O(log n) proofs.

    ``_levels[h]`` holds, back to back, the hashes of the perfect subtrees of
    height ``h`` that are complete: entry ``i`` covers leaves ``[i*2^h, (i+1)*2^h)``.
    ``_levels[0]`` is the full list of leaf hashes. The *frontier* (compact range
    ``[0, n)``) is implicit: level ``h`` has an odd number of entries exactly when
    bit ``h`` of ``n`` is set, and then its last entry is that frontier node.

    Not thread-safe: one writer per partition, as the ledger is.
    """

    __slots__ = ("_levels", "_size", "_root")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self._root: bytes | None = EMPTY_ROOT  # cache for the current size

    @classmethod
    def from_leaf_hashes(cls, hashes: Iterable[bytes]) -> MerkleTree:
        tree = cls()
        for h in hashes:
            tree.append_leaf_hash(h)
        return tree

    # -- growth ---------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._size

    def append(self, leaf_data: bytes) -> int:
        """Append one leaf (for TenSafe: an event's 32-byte chain hash); returns its index."""
        return self.append_leaf_hash(leaf_hash(leaf_data))

    def extend(self, leaves: Iterable[bytes]) -> int:
        """Append leaf data in order; returns the new size."""
        for data in leaves:
            self.append_leaf_hash(_sha256(LEAF_PREFIX + _as_bytes(data)).digest())
        return self._size

    def append_leaf_hash(self, h: bytes) -> int:
        """Append an already-hashed leaf (``leaf_hash(data)``); returns its index."""
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {h!r:.80}")
        levels = self._levels
        levels[0] += h
        self._size += 1
        n = self._size
        level = 0
        # Each trailing zero bit of the new size is one perfect subtree just completed:
        # its two children are the last two entries of the level below.
        while not n & 1:
            parent = _sha256(NODE_PREFIX + levels[level][-64:]).digest()
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += parent
            n >>= 1
        self._root = None
        return self._size - 1

    # -- reads ----------------------------------------------------------------

    def leaf_hash_at(self, index: int) -> bytes:
        self._check_index(index, self._size)
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all). Historical sizes are O(log n)."""
        if size is not None:
            self._check_size(size)
        if size is None or size == self._size:
            if self._root is None:
                self._root = self._range_hash(0, self._size)
            return self._root
        return self._range_hash(0, size)

    def frontier(self, size: int | None = None) -> list[bytes]:
        """The compact range ``[0, size)``: roots of its perfect subtrees, left to right.

        Folding them right to left with ``node_hash`` gives ``root(size)``.
        """
        size = self._size if size is None else size
        self._check_size(size)
        return [self._perfect(start, width) for start, width in _decompose(0, size)]

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for any 0 <= start < end <= size."""
        if not (_is_int(start) and _is_int(end) and 0 <= start < end <= self._size):
            raise ValueError(f"bad leaf range [{start}, {end}) for tree size {self._size}")
        return self._range_hash(start, end)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 PATH(index, D[0:size]), leaf-side first."""
        size = self._size if size is None else size
        self._check_size(size)
        self._check_index(index, size)
        return inclusion_path(index, size, self._range_hash)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 6962 PROOF(size1, D[0:size2]); empty when size1 is 0 or equals size2."""
        size2 = self._size if size2 is None else size2
        self._check_size(size2)
        if not (_is_int(size1) and 0 <= size1 <= size2):
            raise ValueError(f"need 0 <= size1 <= size2, got size1={size1}, size2={size2}")
        return consistency_path(size1, size2, self._range_hash)

    # -- internals ------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if not _is_int(size) or not 0 <= size <= self._size:
            raise ValueError(f"tree size {size!r} outside [0, {self._size}]")

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not _is_int(index) or not 0 <= index < size:
            raise ValueError(f"leaf index {index!r} outside [0, {size})")

    def _range_hash(self, start: int, end: int) -> bytes:
        width = end - start
        if width & (width - 1) == 0 and start & (width - 1) == 0:
            if width == 0:
                return EMPTY_ROOT
            # Fast path: almost every node a proof asks for is a stored perfect subtree.
            height = width.bit_length() - 1
            off = (start >> height) * HASH_SIZE
            return bytes(self._levels[height][off : off + HASH_SIZE])
        pieces = [self._perfect(s, w) for s, w in _decompose(start, end)]
        # MTH splits off the largest power of two first, so the pieces nest to the right.
        acc = pieces[-1]
        for piece in reversed(pieces[:-1]):
            acc = _sha256(NODE_PREFIX + piece + acc).digest()
        return acc

    def _perfect(self, start: int, width: int) -> bytes:
        """Hash of the perfect range [start, start+width), width a power of two."""
        height = width.bit_length() - 1
        if start & (width - 1) == 0:  # aligned: stored verbatim
            off = (start >> height) * HASH_SIZE
            return bytes(self._levels[height][off : off + HASH_SIZE])
        # Unaligned ranges are never tree nodes; only subtree_hash() callers reach here.
        half = width >> 1
        return _sha256(NODE_PREFIX + self._perfect(start, half) + self._perfect(start + half, half)).digest()


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # True is not a size


def _as_bytes(data: bytes) -> bytes:
    # bytes(int) would silently make zero bytes and bytes(str) fails late: be explicit.
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"leaf data must be bytes, got {type(data).__name__}")


def _decompose(start: int, end: int) -> list[tuple[int, int]]:
    """Split [start, end) the way MTH does: largest power of two <= remaining, repeatedly."""
    out = []
    while start < end:
        width = 1 << ((end - start).bit_length() - 1)
        out.append((start, width))
        start += width
    return out
