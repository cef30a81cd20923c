"""The in-toto Statement of a package and its predicate sections (docs/TSSP_SPEC.md §2).

Parsing is strict: exact keys, typed values, value ranges. The same validators run
when a package is created (so a signer never signs a malformed predicate) and when it
is verified (so a malformed predicate from a trusted signer is still refused).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tensafe.events.checkpoint_format import (
    CheckpointFormatError,
    InclusionProofFile,
    SignedCheckpoint,
)

from ._json import (
    HEX64_RE,
    StrictJSONError,
    exact_keys,
    is_int,
    is_number,
    loads,
)

__all__ = [
    "ADAPTER_FILES",
    "DP_CERTIFICATE_TYPE",
    "ENCRYPTION",
    "MANIFEST_NAME",
    "PREDICATE_TYPE",
    "RECIPIENTS_NAME",
    "STATEMENT_TYPE",
    "SUBJECT_NAMES",
    "WEIGHTS_NAME",
    "Statement",
    "dp_certificate_from_metrics",
    "validate_dp_certificate",
    "validate_provenance",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://tensafe.dev/provenance/v1"
DP_CERTIFICATE_TYPE = "https://tensafe.dev/dp-certificate/v1"
TSSP_VERSION = 1

MANIFEST_NAME = "manifest.dsse.json"
RECIPIENTS_NAME = "recipients.json"
WEIGHTS_NAME = "weights.enc"
SUBJECT_NAMES = (RECIPIENTS_NAME, WEIGHTS_NAME)  # sorted
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # sorted
ADAPTER_FORMAT = "peft-lora"
ENCRYPTION = {
    "weights": "tensafe-aead-stream-v1/aes-256-gcm",
    "key_wrap": "tensafe-kem-wrap-v1/mlkem768-x25519",
}

PACKAGE_ID_RE = re.compile(r"tssp_[0-9a-f]{32}")
CREATED_AT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
LEDGER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_PROOFS = 4096
MAX_ID_LEN = 256

ACCOUNTANTS = ("rdp", "prv", "pld")
SAMPLING_POISSON = "poisson"
SAMPLING_CLIENT = "client_batches"
GUARANTEE_EXACT = "exact_poisson"
GUARANTEE_CONDITIONAL = "conditional_on_client_sampling"
_GUARANTEE_FOR = {SAMPLING_POISSON: GUARANTEE_EXACT, SAMPLING_CLIENT: GUARANTEE_CONDITIONAL}
_SIZE_KEY_FOR = {SAMPLING_POISSON: "dataset_size", SAMPLING_CLIENT: "declared_dataset_size"}
NEIGHBORING = ("add_or_remove_one", "replace_one")
# The trainer's spelling for the exact Poisson guarantee (tensafe.trainer.sampling.GUARANTEE_POISSON).
_TRAINER_GUARANTEES = {
    "poisson_subsampled_gaussian": GUARANTEE_EXACT,
    GUARANTEE_CONDITIONAL: GUARANTEE_CONDITIONAL,
}

_DP_REQUIRED = {
    "type", "epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant", "sampling_mode",
    "guarantee", "max_grad_norm", "neighboring_relation", "test_mode",
}  # fmt: skip
_DP_OPTIONAL = {
    "dataset_size",
    "declared_dataset_size",
    "expected_batch_size",
    "target_epsilon",
    "noise_source",
}


def _err(msg: str) -> StrictJSONError:
    return StrictJSONError(msg)


def _id_string(x: object, what: str) -> str:
    if not isinstance(x, str) or not 1 <= len(x) <= MAX_ID_LEN or not x.isprintable():
        raise _err(f"{what} must be a printable string of 1..{MAX_ID_LEN} characters")
    return x


def _hex64(x: object, what: str) -> str:
    if not isinstance(x, str) or not HEX64_RE.fullmatch(x):
        raise _err(f"{what} must be 64 lowercase hex characters")
    return x


# --------------------------------------------------------------------------- DP certificate


def validate_dp_certificate(obj: object) -> dict[str, Any]:
    """Check a ``dp_certificate`` section (§2.3); return it unchanged. Raises StrictJSONError."""
    d = exact_keys(obj, _DP_REQUIRED, "dp_certificate", _DP_OPTIONAL)
    if d["type"] != DP_CERTIFICATE_TYPE:
        raise _err(f"dp_certificate.type must be {DP_CERTIFICATE_TYPE!r}")
    if not is_number(d["epsilon"]) or d["epsilon"] < 0:
        raise _err("dp_certificate.epsilon must be a finite number >= 0")
    if not is_number(d["delta"]) or not 0 < d["delta"] < 1:
        raise _err("dp_certificate.delta must be in (0, 1)")
    if not is_number(d["noise_multiplier"]) or d["noise_multiplier"] <= 0:
        raise _err("dp_certificate.noise_multiplier must be a finite number > 0")
    if not is_number(d["sample_rate"]) or not 0 < d["sample_rate"] <= 1:
        raise _err("dp_certificate.sample_rate must be in (0, 1]")
    if not is_int(d["steps"]) or d["steps"] < 0:
        raise _err("dp_certificate.steps must be an integer >= 0")
    if d["accountant"] not in ACCOUNTANTS:
        raise _err(f"dp_certificate.accountant must be one of {ACCOUNTANTS}")
    mode = d["sampling_mode"]
    if mode not in _GUARANTEE_FOR:
        raise _err(f"dp_certificate.sampling_mode must be one of {tuple(_GUARANTEE_FOR)}")
    if d["guarantee"] != _GUARANTEE_FOR[mode]:
        # The guarantee is a consequence of the sampling mode; a mismatch would overstate ε.
        raise _err(f"dp_certificate.guarantee must be {_GUARANTEE_FOR[mode]!r} with sampling_mode {mode!r}")
    size_key = _SIZE_KEY_FOR[mode]
    other_key = _SIZE_KEY_FOR[SAMPLING_CLIENT if mode == SAMPLING_POISSON else SAMPLING_POISSON]
    if size_key not in d or other_key in d:
        raise _err(f"dp_certificate: sampling_mode {mode!r} needs {size_key!r} and no {other_key!r}")
    if not is_int(d[size_key]) or d[size_key] < 1:
        raise _err(f"dp_certificate.{size_key} must be an integer >= 1")
    if not is_number(d["max_grad_norm"]) or d["max_grad_norm"] <= 0:
        raise _err("dp_certificate.max_grad_norm must be a finite number > 0")
    if d["neighboring_relation"] not in NEIGHBORING:
        raise _err(f"dp_certificate.neighboring_relation must be one of {NEIGHBORING}")
    if not isinstance(d["test_mode"], bool):
        raise _err("dp_certificate.test_mode must be a boolean")
    if "expected_batch_size" in d:
        ebs = d["expected_batch_size"]
        if not is_number(ebs) or not 0 < ebs <= d[size_key]:
            raise _err(f"dp_certificate.expected_batch_size must be in (0, {size_key}]")
        if not math.isclose(ebs / d[size_key], d["sample_rate"], rel_tol=1e-9):
            raise _err("dp_certificate.sample_rate differs from expected_batch_size / dataset size")
    if "target_epsilon" in d and (not is_number(d["target_epsilon"]) or d["target_epsilon"] <= 0):
        raise _err("dp_certificate.target_epsilon must be a finite number > 0")
    if "noise_source" in d and (not isinstance(d["noise_source"], str) or len(d["noise_source"]) > 256):
        raise _err("dp_certificate.noise_source must be a string of at most 256 characters")
    return d


def dp_certificate_from_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Build the certificate section from ``DPTrainer.dp_metrics()``.

    Refuses a run without DP (there is no honest certificate for it).
    """
    if not metrics.get("enabled", False):
        raise ValueError("DP was not enabled for this run: there is no privacy certificate to package")
    guarantee = _TRAINER_GUARANTEES.get(str(metrics.get("guarantee")))
    if guarantee is None:
        raise ValueError(f"unknown guarantee {metrics.get('guarantee')!r} in dp_metrics")
    mode = metrics["sampling_mode"]
    size_key = _SIZE_KEY_FOR.get(mode)
    if size_key is None:
        raise ValueError(f"unknown sampling mode {mode!r} in dp_metrics")
    cert: dict[str, Any] = {
        "type": DP_CERTIFICATE_TYPE,
        "epsilon": float(metrics["epsilon_spent"]),
        "delta": float(metrics["delta"]),
        "noise_multiplier": float(metrics["noise_multiplier"]),
        "sample_rate": float(metrics["sample_rate"]),
        "steps": int(metrics["steps"]),
        "accountant": str(metrics["accountant"]),
        "sampling_mode": mode,
        "guarantee": guarantee,
        size_key: int(metrics[size_key]),
        "max_grad_norm": float(metrics["max_grad_norm"]),
        "neighboring_relation": str(metrics.get("neighboring_relation", "add_or_remove_one")),
        "test_mode": bool(metrics.get("test_mode", False)),
    }
    if metrics.get("expected_batch_size") is not None:
        cert["expected_batch_size"] = float(metrics["expected_batch_size"])
    if metrics.get("target_epsilon") is not None:
        cert["target_epsilon"] = float(metrics["target_epsilon"])
    if metrics.get("noise_source"):
        cert["noise_source"] = str(metrics["noise_source"])
    return validate_dp_certificate(cert)


# --------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class LedgerEvidence:
    ledger_id: str
    partition: int
    checkpoint: SignedCheckpoint | None
    proofs: tuple[InclusionProofFile, ...]


def _validate_ledger(obj: object) -> LedgerEvidence:
    d = exact_keys(obj, {"ledger_id", "partition", "checkpoint", "inclusion_proofs"}, "provenance.ledger")
    if not isinstance(d["ledger_id"], str) or not LEDGER_ID_RE.fullmatch(d["ledger_id"]):
        raise _err("provenance.ledger.ledger_id must match [A-Za-z0-9._-]{1,128}")
    if not is_int(d["partition"]) or not 0 <= d["partition"] < 2**31:
        raise _err("provenance.ledger.partition must be an integer in [0, 2^31)")
    proofs_raw = d["inclusion_proofs"]
    if not isinstance(proofs_raw, list) or len(proofs_raw) > MAX_PROOFS:
        raise _err(f"provenance.ledger.inclusion_proofs must be a list of at most {MAX_PROOFS}")
    try:
        cp = None if d["checkpoint"] is None else SignedCheckpoint.from_dict(d["checkpoint"])
        proofs = tuple(InclusionProofFile.from_dict(p) for p in proofs_raw)
    except CheckpointFormatError as exc:
        raise _err(f"provenance.ledger: {exc}") from None
    if cp is None and proofs:
        raise _err("provenance.ledger: inclusion proofs without a checkpoint")
    return LedgerEvidence(d["ledger_id"], d["partition"], cp, proofs)


def _validate_adapter(obj: object) -> dict[str, Any]:
    d = exact_keys(obj, {"format", "files", "config"}, "provenance.adapter")
    if d["format"] != ADAPTER_FORMAT:
        raise _err(f"provenance.adapter.format must be {ADAPTER_FORMAT!r}")
    if d["files"] != list(ADAPTER_FILES):
        raise _err(f"provenance.adapter.files must be {list(ADAPTER_FILES)}")
    cfg = d["config"]
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise _err("provenance.adapter.config must be a PEFT LoRA adapter_config object (peft_type LORA)")
    return d


def validate_provenance(obj: object) -> tuple[dict[str, Any], LedgerEvidence]:
    d = exact_keys(obj, {"base_model", "tenant_id", "training_client_id", "ledger", "adapter"}, "provenance")
    bm = exact_keys(d["base_model"], {"ref", "weights_sha256"}, "provenance.base_model")
    _id_string(bm["ref"], "provenance.base_model.ref")
    _hex64(bm["weights_sha256"], "provenance.base_model.weights_sha256")
    _id_string(d["tenant_id"], "provenance.tenant_id")
    _id_string(d["training_client_id"], "provenance.training_client_id")
    ledger = _validate_ledger(d["ledger"])
    _validate_adapter(d["adapter"])
    # The checkpoint's origin vs ledger_id/partition is checked with the proofs (package.py),
    # so that a mismatch is reported as bad_checkpoint, next to the signature check.
    return d, ledger


def _validate_package_section(obj: object) -> dict[str, Any]:
    d = exact_keys(obj, {"tssp_version", "id", "created_at", "encryption"}, "package")
    if not is_int(d["tssp_version"]) or d["tssp_version"] != TSSP_VERSION:
        raise _err(f"package.tssp_version must be {TSSP_VERSION}")
    if not isinstance(d["id"], str) or not PACKAGE_ID_RE.fullmatch(d["id"]):
        raise _err("package.id must be 'tssp_' + 32 lowercase hex")
    if not isinstance(d["created_at"], str) or not CREATED_AT_RE.fullmatch(d["created_at"]):
        raise _err("package.created_at must be YYYY-MM-DDTHH:MM:SSZ")
    try:
        datetime.strptime(d["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise _err("package.created_at is not a valid date and time") from None
    if d["encryption"] != ENCRYPTION:
        raise _err(f"package.encryption must be exactly {ENCRYPTION}")
    return d


# --------------------------------------------------------------------------- statement


@dataclass(frozen=True)
class Statement:
    subjects: dict[str, str]  # name -> sha256 hex
    package: dict[str, Any]
    provenance: dict[str, Any]
    dp_certificate: dict[str, Any]
    ledger: LedgerEvidence
    raw: dict[str, Any]

    @property
    def package_id(self) -> str:
        return str(self.package["id"])

    @classmethod
    def parse_envelope_payload(cls, payload: bytes) -> dict[str, Any]:
        """Just the outer Statement shape (for inspect): type, subjects, predicateType."""
        st = exact_keys(
            loads(payload, "statement"), {"_type", "subject", "predicateType", "predicate"}, "statement"
        )
        if st["_type"] != STATEMENT_TYPE:
            raise _err(f"statement._type must be {STATEMENT_TYPE!r}")
        if st["predicateType"] != PREDICATE_TYPE:
            raise _err(f"statement.predicateType must be {PREDICATE_TYPE!r}")
        return st

    @classmethod
    def parse_subjects(cls, st: Mapping[str, Any]) -> dict[str, str]:
        subj = st["subject"]
        if not isinstance(subj, list):
            raise _err("statement.subject must be a list")
        out: dict[str, str] = {}
        for i, s in enumerate(subj):
            s = exact_keys(s, {"name", "digest"}, f"statement.subject[{i}]")
            dg = exact_keys(s["digest"], {"sha256"}, f"statement.subject[{i}].digest")
            if not isinstance(s["name"], str) or s["name"] in out:
                raise _err(f"statement.subject[{i}].name must be a unique string")
            out[s["name"]] = _hex64(dg["sha256"], f"statement.subject[{i}].digest.sha256")
        if list(out) != list(SUBJECT_NAMES):
            raise _err(f"statement.subject must list exactly {list(SUBJECT_NAMES)}, sorted")
        return out

    @classmethod
    def parse_predicate(cls, st: dict[str, Any], subjects: dict[str, str]) -> Statement:
        pred = exact_keys(st["predicate"], {"package", "provenance", "dp_certificate"}, "predicate")
        package = _validate_package_section(pred["package"])
        provenance, ledger = validate_provenance(pred["provenance"])
        cert = validate_dp_certificate(pred["dp_certificate"])
        return cls(subjects, package, provenance, cert, ledger, st)

    @classmethod
    def parse(cls, payload: bytes) -> Statement:
        st = cls.parse_envelope_payload(payload)
        return cls.parse_predicate(st, cls.parse_subjects(st))


def build_statement(
    subjects: Mapping[str, str],
    package: Mapping[str, Any],
    provenance: Mapping[str, Any],
    dp_certificate: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": subjects[n]}} for n in sorted(subjects)],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "package": dict(package),
            "provenance": dict(provenance),
            "dp_certificate": dict(dp_certificate),
        },
    }
