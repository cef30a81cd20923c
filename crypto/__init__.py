"""TenSafe crypto (``tensafe.crypto``). See docs/CRYPTO.md.

Modules (import what you need; nothing here imports torch):

* ``errors``      exception classes with machine-readable ``code``
* ``signing``     hybrid Ed25519 + ML-DSA-65 signatures
* ``kem``         hybrid X25519 + ML-KEM-768 (HPKE) key wrapping
* ``aead``        streaming AES-256-GCM for artifacts
* ``fields``      field-level AES-256-GCM for ledger event fields
* ``providers``   KEK providers (local sealed file; Vault/KMS adapter point)
* ``keyring``     per-tenant KEK/DEK hierarchy, rotation, crypto-shredding
* ``artifacts``   encrypted artifact store; ``storage`` / ``s3`` backends
* ``oqs_backend`` optional liboqs cross-checks
"""
