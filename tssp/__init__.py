"""TenSafe secure packages (TSSP): signed, encrypted LoRA adapters verifiable offline.

Format: docs/TSSP_SPEC.md. Importing this package does not import torch; only
``tensafe.tssp.edge`` (the loader) does, lazily.
"""

from tensafe.crypto.digest import model_weights_sha256

from .errors import (
    BaseModelMismatch,
    ContainerError,
    DigestMismatch,
    ManifestError,
    PackageError,
    PayloadError,
    PolicyViolation,
    ProofError,
    RecipientError,
    SignerError,
)
from .manifest import DP_CERTIFICATE_TYPE, PREDICATE_TYPE, dp_certificate_from_metrics
from .package import (
    PackageInfo,
    UnpackedPackage,
    VerifiedPackage,
    create_package,
    inspect_package,
    unpack_package,
    verify_package,
)
from .policy import Policy, PolicyDecision, PolicyError

__all__ = [
    "DP_CERTIFICATE_TYPE",
    "PREDICATE_TYPE",
    "BaseModelMismatch",
    "ContainerError",
    "DigestMismatch",
    "ManifestError",
    "PackageError",
    "PackageInfo",
    "PayloadError",
    "Policy",
    "PolicyDecision",
    "PolicyError",
    "PolicyViolation",
    "ProofError",
    "RecipientError",
    "SignerError",
    "UnpackedPackage",
    "VerifiedPackage",
    "create_package",
    "dp_certificate_from_metrics",
    "inspect_package",
    "model_weights_sha256",
    "unpack_package",
    "verify_package",
]
