"""Inclusion and consistency proofs: generation (RFC 6962 §2.1.1/§2.1.2) and
verification (RFC 9162 §2.1.3.2/§2.1.4.2, the bit-manipulation algorithms, step by step).

This module depends on nothing but ``hashlib`` on purpose: it is the piece a third
party copies to check a TenSafe proof, so it must not need the rest of TenSafe.
(That is also why it restates the one-line node hash instead of importing it from
``tensafe.events.merkle``, which imports this module.)

Conventions (all as in RFC 9162):
* hashes are 32-byte SHA-256 digests; a *leaf hash* is SHA-256(0x00 || leaf data);
* an inclusion proof lists sibling hashes from the leaf up to the root;
* a consistency proof is PROOF(m, D[n]) = SUBPROOF(m, D[n], true), deepest first;
* sizes and indices are unsigned 64-bit integers.

Verification never raises: any malformed input (wrong types, index >= size,
size1 > size2, a proof of the wrong length or with elements that are not 32 bytes)
simply yields ``False``. Generation raises ``ValueError`` for impossible requests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

__all__ = [
    "MAX_PROOF_LEN",
    "MAX_TREE_SIZE",
    "SubtreeHash",
    "consistency_path",
    "inclusion_path",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
MAX_TREE_SIZE = 2**64 - 1  # RFC 9162 tree sizes are uint64
# A tree of < 2^64 leaves is at most 64 levels deep; a consistency proof may carry
# one extra hash (the old root's subtree). Longer lists are rejected before hashing.
MAX_PROOF_LEN = 65
_EMPTY_ROOT = hashlib.sha256(b"").digest()

# subtree_hash(start, end) -> MTH(D[start:end]); supplied by whoever holds the leaves.
SubtreeHash = Callable[[int, int], bytes]


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# --------------------------------------------------------------------------- generation


def inclusion_path(index: int, size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(index, D[0:size]).

    PATH(m, D[1]) = {};  for n > 1 and k the split point:
      m < k:  PATH(m, D[0:k]) : MTH(D[k:n])
      m >= k: PATH(m - k, D[k:n]) : MTH(D[0:k])
    Walked top-down (iteratively), then reversed so the leaf's sibling comes first.
    """
    if not _is_uint64(size) or not _is_uint64(index) or index >= size:
        raise ValueError(f"need 0 <= index < size, got index={index!r}, size={size!r}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_hash(start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(size1: int, size2: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(size1, D[0:size2]) = SUBPROOF(size1, D[0:size2], true).

    SUBPROOF(m, D[m], true) = {};  SUBPROOF(m, D[m], false) = {MTH(D[m])}
    for m < n and k the split point:
      m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
      m > k:  SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
    RFC 6962 defines it for 0 < m < n; like Trillian we return [] for m == 0 and
    m == n, where there is nothing to prove (see verify_consistency).
    """
    if not _is_uint64(size1) or not _is_uint64(size2) or size1 > size2:
        raise ValueError(f"need 0 <= size1 <= size2, got size1={size1!r}, size2={size2!r}")
    if size1 == 0 or size1 == size2:
        return []
    path: list[bytes] = []
    start, end, m, whole = 0, size2, size1, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                path.append(subtree_hash(start, end))
            break
        k = _split(n)
        if m <= k:
            path.append(subtree_hash(start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(start, start + k))
            start += k
            m -= k
            whole = False
    path.reverse()
    return path


# --------------------------------------------------------------------------- verification


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` place ``leaf_hash`` at ``index`` in the tree
    of ``size`` leaves whose root is ``root``?"""
    path = _hash_list(proof)
    if path is None or not _is_hash(leaf_hash) or not _is_hash(root):
        return False
    if not _is_uint64(index) or not _is_uint64(size):
        return False
    # 1. leaf_index >= tree_size: fail.
    if index >= size:
        return False
    # 2. fn = leaf_index, sn = tree_size - 1.   3. r = hash.
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    # 4. For each p in inclusion_path:
    for p in path:
        # a. sn == 0: the proof is too long.
        if sn == 0:
            return False
        # b. we are a right child, or the last node of an incomplete level.
        if fn & 1 or fn == sn:
            r = _node(p, r)
            # Skip the levels where this node has no right sibling (right border).
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        # c. up one level.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 (the proof was not too short) and r must be the root.
    return sn == 0 and hmac.compare_digest(r, bytes(root))


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (size2, root2) an append-only extension of (size1, root1)?

    Edge cases the RFC leaves to the caller (0 < size1 < size2 is its domain),
    resolved as Trillian and Sigsum do: equal sizes need an empty proof and equal
    roots; size1 == 0 needs an empty proof and root1 == SHA-256("").
    """
    path = _hash_list(proof)
    if path is None or not _is_hash(root1) or not _is_hash(root2):
        return False
    if not _is_uint64(size1) or not _is_uint64(size2) or size1 > size2:
        return False
    if size1 == size2:
        return not path and hmac.compare_digest(bytes(root1), bytes(root2))
    if size1 == 0:
        return not path and hmac.compare_digest(bytes(root1), _EMPTY_ROOT)
    # 1. An empty consistency_path fails.
    if not path:
        return False
    # 2. If first is an exact power of 2, prepend first_hash (it is a node of both trees).
    if size1 & (size1 - 1) == 0:
        path = [bytes(root1), *path]
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = size1 - 1, size2 - 1
    # 4. Climb past the levels where the old tree's last leaf is a right child.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value.
    fr = sr = path[0]
    # 6. For each subsequent value c:
    for c in path[1:]:
        # a. sn == 0: the proof is too long.
        if sn == 0:
            return False
        # b. c is a left sibling: it belongs to both trees.
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            # c is a right sibling: only in the new tree.
            sr = _node(sr, c)
        # c. up one level.
        fn >>= 1
        sn >>= 1
    # 7. Both roots reproduced, and the proof was not too short.
    return sn == 0 and hmac.compare_digest(fr, bytes(root1)) and hmac.compare_digest(sr, bytes(root2))


# --------------------------------------------------------------------------- input checks


def _is_uint64(x: object) -> bool:
    # bool is an int subclass; True as an index is a caller bug, not a 1.
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_TREE_SIZE


def _is_hash(x: object) -> bool:
    return isinstance(x, bytes | bytearray) and len(x) == HASH_SIZE


def _hash_list(proof: object) -> list[bytes] | None:
    """The proof as a list of 32-byte ``bytes``, or None when it is not one."""
    if not isinstance(proof, list | tuple) or len(proof) > MAX_PROOF_LEN:
        return None
    out = []
    for p in proof:
        if not _is_hash(p):
            return None
        out.append(bytes(p))
    return out
