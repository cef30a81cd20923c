"""RFC 6962 / RFC 9162 Merkle tree: known vectors, exhaustive cross-checks against the
naive recursive definitions, and adversarial verification inputs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensafe.events.merkle import EMPTY_ROOT, MerkleTree, leaf_hash, node_hash
from tensafe.events.proofs import (
    consistency_path,
    inclusion_path,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------- reference
# The RFC 6962 §2.1 definitions, transcribed literally (recursive, O(n) per call).


def ref_leaf(d: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + d).digest()


def ref_node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """MTH over leaf *data*."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return ref_leaf(d[0])
    k = ref_split(n)
    return ref_node(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_split(n)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --------------------------------------------------------------------------- known values
# The Certificate Transparency / Trillian test tree (merkle/testonly in Trillian,
# in_memory_merkle_tree_test in the CT tools).

CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = {
    0: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
# (0-based leaf index, tree size, path)
CT_INCLUSION = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip


def _ct_tree() -> MerkleTree:
    t = MerkleTree()
    t.extend(CT_LEAVES)
    return t


def _leaves(n: int) -> list[bytes]:
    # 32-byte leaves, like TenSafe chain hashes.
    return [hashlib.sha256(b"leaf-%d" % i).digest() for i in range(n)]


def test_hash_primitives() -> None:
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


def test_well_known_root_of_size_8() -> None:
    assert _ct_tree().root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@pytest.mark.parametrize("size", range(0, 9))
def test_ct_roots_incremental_and_historical(size: int) -> None:
    assert ref_mth(CT_LEAVES[:size]).hex() == CT_ROOTS[size]  # the reference reproduces CT
    grown = MerkleTree()
    grown.extend(CT_LEAVES[:size])
    assert grown.root().hex() == CT_ROOTS[size]  # incremental, current size
    assert _ct_tree().root(size).hex() == CT_ROOTS[size]  # historical from a bigger tree


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion_vectors(index: int, size: int, path: list[str]) -> None:
    t = _ct_tree()
    proof = t.inclusion_proof(index, size)
    assert [p.hex() for p in proof] == path
    assert verify_inclusion(ref_leaf(CT_LEAVES[index]), index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("m", "n", "path"), CT_CONSISTENCY)
def test_ct_consistency_vectors(m: int, n: int, path: list[str]) -> None:
    proof = _ct_tree().consistency_proof(m, n)
    assert [p.hex() for p in proof] == path
    assert verify_consistency(m, n, proof, bytes.fromhex(CT_ROOTS[m]), bytes.fromhex(CT_ROOTS[n]))


# --------------------------------------------------------------------------- exhaustive, n <= 64

N_MAX = 64
LEAVES = _leaves(N_MAX)


@pytest.fixture(scope="module")
def tree64() -> MerkleTree:
    t = MerkleTree()
    for i, d in enumerate(LEAVES):
        assert t.append(d) == i
        assert t.root() == ref_mth(LEAVES[: i + 1])  # root after every append
    return t


@pytest.fixture(scope="module")
def ref_roots() -> list[bytes]:
    return [ref_mth(LEAVES[:n]) for n in range(N_MAX + 1)]


def test_historical_roots_and_frontier(tree64: MerkleTree, ref_roots: list[bytes]) -> None:
    for n in range(N_MAX + 1):
        assert tree64.root(n) == ref_roots[n]
        frontier = tree64.frontier(n)
        assert len(frontier) == bin(n).count("1")  # one perfect subtree per set bit
        if frontier:
            acc = frontier[-1]
            for f in reversed(frontier[:-1]):
                acc = node_hash(f, acc)
            assert acc == ref_roots[n]


def test_subtree_hash_any_range(tree64: MerkleTree) -> None:
    for start in range(N_MAX):
        for end in range(start + 1, N_MAX + 1):
            assert tree64.subtree_hash(start, end) == ref_mth(LEAVES[start:end])


def test_every_inclusion_proof(tree64: MerkleTree, ref_roots: list[bytes]) -> None:
    for n in range(1, N_MAX + 1):
        root = ref_roots[n]
        for i in range(n):
            proof = tree64.inclusion_proof(i, n)
            assert proof == ref_path(i, LEAVES[:n]), (i, n)
            lh = ref_leaf(LEAVES[i])
            assert verify_inclusion(lh, i, n, proof, root), (i, n)
            # The same proof must not place the leaf at any other index. (It may verify
            # under another size with the same path shape, e.g. (0, 3) and (0, 4): the
            # size is authenticated by the signed checkpoint, not by the path.)
            for j in range(n):
                if j != i:
                    assert not verify_inclusion(lh, j, n, proof, root), (i, j, n)
            # Truncated and extended proofs fail.
            if proof:
                assert not verify_inclusion(lh, i, n, proof[:-1], root)
            assert not verify_inclusion(lh, i, n, [*proof, root], root)
            assert not verify_inclusion(lh, i, n, [root, *proof], root)


def test_every_consistency_proof(tree64: MerkleTree, ref_roots: list[bytes]) -> None:
    for n in range(1, N_MAX + 1):
        for m in range(0, n + 1):
            proof = tree64.consistency_proof(m, n)
            if 0 < m < n:
                assert proof == ref_proof(m, LEAVES[:n]), (m, n)
            else:
                assert proof == []
            r1, r2 = ref_roots[m], ref_roots[n]
            assert verify_consistency(m, n, proof, r1, r2), (m, n)
            # Swapped / wrong roots and wrong sizes fail.
            if r1 != r2:
                assert not verify_consistency(m, n, proof, r2, r1)
            if m > 0:  # (size 0 is consistent with every tree)
                assert not verify_consistency(m, n, proof, r1, ref_roots[n - 1] if m < n else ref_leaf(b"x"))
            if 0 < m < n:
                assert not verify_consistency(m, n, proof, ref_roots[m - 1] if m > 1 else ref_leaf(b"x"), r2)
                for m2 in range(1, n):
                    if m2 != m:
                        assert not verify_consistency(m2, n, proof, ref_roots[m2], r2), (m, m2, n)
                assert not verify_consistency(m, n, proof[:-1], r1, r2)
                assert not verify_consistency(m, n, [*proof, r2], r1, r2)
                assert not verify_consistency(m, n, [r1, *proof], r1, r2)
                assert not verify_consistency(m, n, [], r1, r2)


def test_generators_match_reference_directly() -> None:
    # The generators in proofs.py, fed the naive reference instead of MerkleTree.
    leaves = LEAVES[:23]

    def sub(a: int, b: int) -> bytes:
        return ref_mth(leaves[a:b])

    for i in range(23):
        assert inclusion_path(i, 23, sub) == ref_path(i, leaves)
    for m in range(1, 23):
        assert consistency_path(m, 23, sub) == ref_proof(m, leaves)


def test_larger_tree_spot_checks() -> None:
    n = 5000
    leaves = _leaves(n)
    t = MerkleTree()
    t.extend(leaves)
    root = ref_mth(leaves)
    assert t.root() == root
    for i in (0, 1, 2047, 2048, 4095, 4096, 4999):
        assert verify_inclusion(ref_leaf(leaves[i]), i, n, t.inclusion_proof(i), root)
    r3000 = ref_mth(leaves[:3000])
    assert t.root(3000) == r3000
    for m in (1, 1024, 2047, 2048, 2049, 3000, 4999):
        assert verify_consistency(m, n, t.consistency_proof(m), t.root(m), root)
    assert verify_consistency(3000, n, t.consistency_proof(3000), r3000, root)


def test_tree_and_generator_argument_errors(tree64: MerkleTree) -> None:
    bad_inclusion = [(-1, 8), (8, 8), (0, 0), (0, 65), (True, 8)]
    for index, size in bad_inclusion:
        with pytest.raises(ValueError):
            tree64.inclusion_proof(index, size)
    for m, n in [(-1, 8), (9, 8), (0, 65), (1, True)]:
        with pytest.raises(ValueError):
            tree64.consistency_proof(m, n)
    for start, end in [(0, 0), (5, 5), (6, 5), (-1, 3), (0, 65)]:
        with pytest.raises(ValueError):
            tree64.subtree_hash(start, end)
    for bad_size in (65, -1, True, 8.0):
        with pytest.raises(ValueError):
            tree64.root(bad_size)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MerkleTree().root(True)  # type: ignore[arg-type]  # must not hit the cache path
    with pytest.raises(ValueError):
        tree64.leaf_hash_at(64)
    with pytest.raises(ValueError):
        inclusion_path(3, 3, lambda a, b: b"")
    with pytest.raises(ValueError):
        consistency_path(4, 3, lambda a, b: b"")
    with pytest.raises(ValueError):
        MerkleTree().append_leaf_hash(b"short")
    with pytest.raises(TypeError):
        MerkleTree().append(7)  # type: ignore[arg-type]  # bytes(7) would be b"\0"*7
    with pytest.raises(TypeError):
        MerkleTree().append("text")  # type: ignore[arg-type]


def test_from_leaf_hashes_and_leaf_access() -> None:
    t = MerkleTree.from_leaf_hashes(ref_leaf(d) for d in CT_LEAVES)
    assert t.root().hex() == CT_ROOTS[8] and len(t) == t.size == 8
    assert t.leaf_hash_at(3) == ref_leaf(CT_LEAVES[3])
    assert MerkleTree().root() == EMPTY_ROOT and MerkleTree().frontier() == []


# --------------------------------------------------------------------------- property-based

SMALL = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(1, N_MAX))
    return n, draw(st.integers(0, n - 1))


@SMALL
@given(tree_and_index(), st.data())
def test_tampered_inclusion_proof_fails(tree64: MerkleTree, ni: tuple[int, int], data: st.DataObject) -> None:
    n, i = ni
    proof = tree64.inclusion_proof(i, n)
    root, lh = tree64.root(n), tree64.leaf_hash_at(i)
    assert verify_inclusion(lh, i, n, proof, root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = bytearray(proof[k])
        bad[bit // 8] ^= 1 << (bit % 8)
        assert not verify_inclusion(lh, i, n, [*proof[:k], bytes(bad), *proof[k + 1 :]], root)
        if len(proof) > 1:  # reordering is tampering too
            perm = data.draw(st.permutations(proof))
            if perm != proof:
                assert not verify_inclusion(lh, i, n, perm, root)
    other = data.draw(st.integers(0, n - 1).filter(lambda j: j != i)) if n > 1 else None
    if other is not None:
        assert not verify_inclusion(lh, other, n, proof, root)
        assert not verify_inclusion(tree64.leaf_hash_at(other), i, n, proof, root)
    wrong_root = data.draw(st.binary(min_size=32, max_size=32).filter(lambda r: r != root))
    assert not verify_inclusion(lh, i, n, proof, wrong_root)
    # A leaf's data is not its leaf hash: the 0x00 prefix must be applied by the caller.
    assert not verify_inclusion(LEAVES[i], i, n, proof, root)


@SMALL
@given(st.integers(1, N_MAX), st.data())
def test_tampered_consistency_proof_fails(tree64: MerkleTree, n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(1, n))
    proof = tree64.consistency_proof(m, n)
    r1, r2 = tree64.root(m), tree64.root(n)
    assert verify_consistency(m, n, proof, r1, r2)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = bytearray(proof[k])
        bad[bit // 8] ^= 1 << (bit % 8)
        assert not verify_consistency(m, n, [*proof[:k], bytes(bad), *proof[k + 1 :]], r1, r2)
    wrong = data.draw(st.binary(min_size=32, max_size=32).filter(lambda r: r not in (r1, r2)))
    assert not verify_consistency(m, n, proof, wrong, r2)
    assert not verify_consistency(m, n, proof, r1, wrong)
    # A fork: same old prefix, different new leaf, proves nothing about the real new root.
    if m < n:
        forked = MerkleTree()
        forked.extend(LEAVES[: n - 1])
        forked.append(b"fork")
        assert not verify_consistency(m, n, proof, r1, forked.root())


_junk_hash = st.one_of(
    st.binary(max_size=40),
    st.none(),
    st.integers(),
    st.text(max_size=40),
    st.builds(bytearray, st.binary(min_size=32, max_size=32)),
)
_junk_int = st.one_of(
    st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.floats(allow_nan=True), st.text(max_size=3)
)
_junk_proof = st.one_of(
    st.lists(_junk_hash, max_size=70),
    st.lists(st.binary(min_size=32, max_size=32), max_size=70),
    st.none(),
    st.binary(max_size=64),
    st.text(max_size=10),
    st.integers(),
)


@settings(max_examples=400, deadline=None)
@given(_junk_hash, _junk_int, _junk_int, _junk_proof, _junk_hash)
def test_verify_inclusion_never_raises(lh: object, i: object, n: object, proof: object, root: object) -> None:
    assert verify_inclusion(lh, i, n, proof, root) in (True, False)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(_junk_int, _junk_int, _junk_proof, _junk_hash, _junk_hash)
def test_verify_consistency_never_raises(m: object, n: object, proof: object, r1: object, r2: object) -> None:
    assert verify_consistency(m, n, proof, r1, r2) in (True, False)  # type: ignore[arg-type]


def test_malformed_inputs_return_false(tree64: MerkleTree) -> None:
    root8, lh0 = tree64.root(8), tree64.leaf_hash_at(0)
    good = tree64.inclusion_proof(0, 8)
    assert verify_inclusion(lh0, 0, 8, good, root8)
    assert verify_inclusion(lh0, 0, 8, tuple(good), root8)  # tuples are fine
    assert not verify_inclusion(lh0, 8, 8, good, root8)  # index == size
    assert not verify_inclusion(lh0, 9, 8, good, root8)  # index > size
    assert not verify_inclusion(lh0, -1, 8, good, root8)
    assert not verify_inclusion(lh0, 0, 0, [], EMPTY_ROOT)  # nothing is in the empty tree
    assert not verify_inclusion(lh0, False, 8, good, root8)  # bool is not an index
    assert not verify_inclusion(lh0, 0, 2**64, good, root8)  # sizes are uint64
    assert not verify_inclusion(lh0[:31], 0, 8, good, root8)
    assert not verify_inclusion(lh0, 0, 8, [*good[:2], good[2][:31]], root8)
    assert not verify_inclusion(lh0, 0, 8, [g.hex() for g in good], root8)  # type: ignore[misc]
    assert not verify_inclusion(lh0, 0, 8, good, root8.hex())  # type: ignore[arg-type]
    assert not verify_inclusion(lh0, 0, 8, [good[0]] * 1000, root8)  # absurd length, rejected early
    # Consistency.
    p = tree64.consistency_proof(3, 8)
    r3 = tree64.root(3)
    assert verify_consistency(3, 8, p, r3, root8)
    assert not verify_consistency(8, 3, p, root8, r3)  # size1 > size2
    assert not verify_consistency(3, 8, p[:-1], r3, root8)  # wrong length
    assert not verify_consistency(3, 8, [], r3, root8)
    assert not verify_consistency(-3, 8, p, r3, root8)
    assert not verify_consistency(3, 8, [x[:16] for x in p], r3, root8)
    assert not verify_consistency(8, 8, [root8], root8, root8)  # equal sizes: proof must be empty
    assert not verify_consistency(8, 8, [], root8, r3)  # equal sizes: roots must match
    assert verify_consistency(0, 8, [], EMPTY_ROOT, root8)
    assert not verify_consistency(0, 8, [], r3, root8)  # size 0 has exactly one root
    assert not verify_consistency(0, 8, p, EMPTY_ROOT, root8)
    assert verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
