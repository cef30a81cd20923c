"""Exceptions of ``tensafe.tssp``. Every refusal is a ``PackageError`` with a stable ``code``.

Codes (docs/TSSP_SPEC.md §8), by class:

* ``ContainerError``: ``bad_container``, ``missing_file``, ``extra_file``
* ``ManifestError``: ``bad_manifest``, ``bad_recipients``
* ``SignerError``: ``untrusted_signer``, ``bad_signature``
* ``DigestMismatch``: ``digest_mismatch``
* ``ProofError``: ``bad_checkpoint``, ``bad_proof``
* ``RecipientError``: ``wrong_recipient``, ``key_unwrap_failed``
* ``PayloadError``: ``decryption_failed``, ``bad_payload``
* ``PolicyViolation``: ``policy_violation`` (``rules`` names the rules), ``policy_error``
* ``BaseModelMismatch``: ``base_model_mismatch``

Messages never contain key material or plaintext weights.
"""

from __future__ import annotations

from collections.abc import Sequence


class PackageError(Exception):
    """A package was refused. ``code`` is machine-readable; ``str()`` is for humans."""

    code: str = "package_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        file: str | None = None,
        key_id: str | None = None,
        rules: Sequence[str] = (),
        reasons: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.file = file
        self.key_id = key_id
        self.rules: tuple[str, ...] = tuple(rules)
        self.reasons: tuple[str, ...] = tuple(reasons)

    @property
    def rule(self) -> str | None:
        """The first violated policy rule, if any (convenience for single-rule checks)."""
        return self.rules[0] if self.rules else None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"code": self.code, "message": str(self)}
        if self.file is not None:
            out["file"] = self.file
        if self.key_id is not None:
            out["key_id"] = self.key_id
        if self.rules:
            out["rules"] = list(self.rules)
            out["reasons"] = list(self.reasons)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={str(self)!r})"


class ContainerError(PackageError):
    """The ZIP container is not in the canonical TSSP profile, or members are missing/extra."""

    code = "bad_container"


class ManifestError(PackageError):
    """The DSSE envelope, Statement, predicate or recipients file is malformed."""

    code = "bad_manifest"


class SignerError(PackageError):
    """No trusted signer, or the trusted signer's signature does not verify."""

    code = "untrusted_signer"


class DigestMismatch(PackageError):
    """A member's SHA-256 differs from its signed subject digest."""

    code = "digest_mismatch"


class ProofError(PackageError):
    """The ledger checkpoint or an inclusion proof does not verify."""

    code = "bad_proof"


class RecipientError(PackageError):
    """The offered private key is not a recipient, or its wrapped key does not unwrap."""

    code = "wrong_recipient"


class PayloadError(PackageError):
    """The encrypted weights do not decrypt, or the plaintext is not the expected adapter."""

    code = "decryption_failed"


class PolicyViolation(PackageError):
    """The load policy did not return an explicit ``allow == true``."""

    code = "policy_violation"


class BaseModelMismatch(PackageError):
    """The base model offered for loading is not the one the adapter was trained on."""

    code = "base_model_mismatch"


__all__ = [
    "BaseModelMismatch",
    "ContainerError",
    "DigestMismatch",
    "ManifestError",
    "PackageError",
    "PayloadError",
    "PolicyViolation",
    "ProofError",
    "RecipientError",
    "SignerError",
]
