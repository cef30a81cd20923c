"""Cross-checks against liboqs; skipped unless the liboqs shared library is installed."""

from __future__ import annotations

import pytest
from tensafe.crypto import oqs_backend
from tensafe.crypto.errors import BackendUnavailable


def test_probe_never_raises() -> None:
    # Must not try to download/build liboqs or raise SystemExit when it is absent.
    assert oqs_backend.available() in (True, False)


def test_unavailable_is_a_clear_error() -> None:
    if oqs_backend.available():
        pytest.skip("liboqs is installed")
    with pytest.raises(BackendUnavailable) as e:
        oqs_backend.mldsa65_verify(b"", b"", b"")
    assert e.value.code == "liboqs_missing"


needs_oqs = pytest.mark.skipif(not oqs_backend.available(), reason=oqs_backend.UNAVAILABLE_REASON)


@needs_oqs
def test_liboqs_verifies_our_mldsa_half() -> None:
    from tensafe.crypto.signing import HybridSigningKey

    key = HybridSigningKey.generate()
    sig = key.sign(b"message")
    assert oqs_backend.cross_verify_hybrid(key.public_key(), b"message", sig)
    assert not oqs_backend.cross_verify_hybrid(key.public_key(), b"other", sig)


@needs_oqs
def test_liboqs_encaps_openssl_decaps() -> None:
    from cryptography.hazmat.primitives.asymmetric import mlkem

    assert oqs_backend.cross_check_mlkem768(mlkem.MLKEM768PrivateKey.generate())
