"""Build, inspect, verify and unpack TSSP packages (docs/TSSP_SPEC.md).

    info = create_package("a.tssp", adapter_dir, provenance=..., dp_certificate=...,
                          signer=signing_key, recipients=[kem_public_key])
    verified = verify_package("a.tssp", {signer_pub.key_id: signer_pub}, policy)
    unpacked = unpack_package("a.tssp", kem_private_key, out_dir, trusted, policy)

Verification runs the checks of §5 in order and raises a ``PackageError`` whose
``code`` names the first failure; on malformed input it raises nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import tempfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tensafe.crypto import aead
from tensafe.crypto.errors import CryptoError, SignatureError
from tensafe.crypto.kem import BLOB_OVERHEAD, HybridKemPrivateKey, HybridKemPublicKey, unwrap_key, wrap_key
from tensafe.crypto.signing import HybridPublicKey, HybridSigningKey
from tensafe.events.checkpoint_format import (
    CheckpointKeyMismatch,
    InclusionProofFile,
    SignedCheckpoint,
    ledger_origin,
)

from . import _json
from ._json import KEY_ID_RE, StrictJSONError, b64decode_strict, b64encode, exact_keys
from .container import Archive, read_archive, write_archive
from .dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, sign_envelope
from .errors import (
    ContainerError,
    DigestMismatch,
    ManifestError,
    PayloadError,
    ProofError,
    RecipientError,
    SignerError,
)
from .manifest import (
    ADAPTER_FILES,
    ADAPTER_FORMAT,
    ENCRYPTION,
    MANIFEST_NAME,
    RECIPIENTS_NAME,
    SUBJECT_NAMES,
    TSSP_VERSION,
    WEIGHTS_NAME,
    Statement,
    build_statement,
    validate_dp_certificate,
    validate_provenance,
)
from .policy import Policy, PolicyDecision, build_policy_input

__all__ = [
    "PackageInfo",
    "PackageSource",
    "TrustedSigners",
    "UnpackedPackage",
    "VerifiedPackage",
    "create_package",
    "inspect_package",
    "unpack_package",
    "verify_package",
]

PackageSource = str | os.PathLike[str] | bytes | bytearray | memoryview
TrustedSigners = Mapping[str, HybridPublicKey] | Iterable[HybridPublicKey]

RECIPIENTS_FORMAT = "tensafe.tssp.recipients/v1"
WEIGHTS_AAD_TENANT = "tensafe/tssp/v1/weights"
_KEY_WRAP_LABEL = b"tensafe/tssp/v1/package-key\x00"
PACKAGE_KEY_LEN = 32
MAX_RECIPIENTS = 64
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_RECIPIENTS_BYTES = 1024 * 1024
_WRAPPED_LEN = BLOB_OVERHEAD + PACKAGE_KEY_LEN


def _key_wrap_aad(package_id: str) -> bytes:
    return _KEY_WRAP_LABEL + package_id.encode("ascii")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PackageInfo:
    path: Path
    package_id: str
    size: int
    signer_key_id: str
    recipients: tuple[str, ...]
    subjects: dict[str, str]
    manifest_sha256: str


@dataclass(frozen=True)
class VerifiedPackage:
    """Everything a verifier may rely on, all of it covered by a trusted signature."""

    package_id: str
    created_at: str
    signer_key_id: str
    subjects: dict[str, str]
    provenance: dict[str, Any]
    dp_certificate: dict[str, Any]
    recipients: tuple[str, ...]
    checkpoint: SignedCheckpoint | None
    inclusion_proofs: tuple[InclusionProofFile, ...]
    policy_input: dict[str, Any]
    policy_decision: PolicyDecision | None
    statement: dict[str, Any] = field(repr=False)
    _wrapped: dict[str, bytes] = field(repr=False, default_factory=dict)
    _weights: bytes = field(repr=False, default=b"")

    @property
    def base_model(self) -> dict[str, str]:
        return dict(self.provenance["base_model"])

    @property
    def adapter_config(self) -> dict[str, Any]:
        return dict(self.provenance["adapter"]["config"])


@dataclass(frozen=True)
class UnpackedPackage:
    verified: VerifiedPackage
    adapter_dir: Path
    files: dict[str, Path]


# --------------------------------------------------------------------------- helpers


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_source(source: PackageSource) -> bytes | memoryview:
    if isinstance(source, bytes | bytearray | memoryview):
        return source
    path = Path(source)
    size = path.stat().st_size
    if size > 0xFFFFFFFF:
        raise ContainerError(f"{path} is {size} bytes: more than a TSSP package can be", code="bad_container")
    return path.read_bytes()


def _trust_map(trusted: TrustedSigners | None, what: str) -> dict[str, HybridPublicKey]:
    if trusted is None:
        return {}
    out: dict[str, HybridPublicKey] = {}
    items = trusted.items() if isinstance(trusted, Mapping) else ((k.key_id, k) for k in trusted)
    for kid, key in items:
        if not isinstance(key, HybridPublicKey):
            raise TypeError(f"{what}: expected HybridPublicKey values, got {type(key).__name__}")
        if kid != key.key_id:
            # A map entry whose id names another key is a configuration error, not trust.
            raise ValueError(f"{what}: key id {kid} maps to a key whose id is {key.key_id}")
        out[kid] = key
    return out


def _manifest_error(exc: Exception, code: str = "bad_manifest", file: str = MANIFEST_NAME) -> ManifestError:
    return ManifestError(str(exc), code=code, file=file)


# --------------------------------------------------------------------------- create


def _adapter_files(adapter_dir: str | os.PathLike[str]) -> dict[str, bytes]:
    d = Path(adapter_dir)
    files: dict[str, bytes] = {}
    for name in ADAPTER_FILES:
        p = d / name
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: export the adapter with DPTrainer.export_adapter(dir)")
        files[name] = p.read_bytes()
    return files


def _as_plain(obj: Any) -> Any:
    """Accept SignedCheckpoint / InclusionProofFile objects where their JSON dicts are expected."""
    if isinstance(obj, SignedCheckpoint | InclusionProofFile):
        return obj.to_dict()
    return obj


def _prepare_provenance(provenance: Mapping[str, Any], adapter_config: dict[str, Any]) -> dict[str, Any]:
    if "adapter" in provenance:
        raise ValueError("provenance must not contain 'adapter': it is taken from the adapter directory")
    prov = dict(provenance)
    ledger = dict(prov.get("ledger") or {})
    ledger["checkpoint"] = _as_plain(ledger.get("checkpoint"))
    ledger["inclusion_proofs"] = [_as_plain(p) for p in ledger.get("inclusion_proofs") or []]
    prov["ledger"] = ledger
    prov["adapter"] = {"format": ADAPTER_FORMAT, "files": list(ADAPTER_FILES), "config": adapter_config}
    try:
        prov, evidence = validate_provenance(_json.loads(_json.dumps(prov), "provenance"))
    except (TypeError, ValueError) as exc:  # StrictJSONError, or json.dumps refusing NaN
        raise ValueError(f"invalid provenance: {exc}") from None
    # Never sign evidence that a verifier would refuse.
    cp = evidence.checkpoint
    if cp is not None:
        if cp.origin != ledger_origin(evidence.ledger_id, evidence.partition):
            raise ValueError(
                f"checkpoint origin {cp.origin!r} is not ledger {evidence.ledger_id}/{evidence.partition}"
            )
        for i, proof in enumerate(evidence.proofs):
            if proof.checkpoint != cp:
                raise ValueError(
                    f"inclusion proof {i} is against another checkpoint than provenance.ledger.checkpoint"
                )
            if not proof.verify_path():
                raise ValueError(f"inclusion proof {i} does not lead to the checkpoint root")
    return prov


def create_package(
    out_path: str | os.PathLike[str],
    adapter_dir: str | os.PathLike[str],
    *,
    provenance: Mapping[str, Any],
    dp_certificate: Mapping[str, Any],
    signer: HybridSigningKey,
    recipients: list[HybridKemPublicKey],
    created_at: datetime | None = None,
) -> PackageInfo:
    """Encrypt the PEFT adapter in ``adapter_dir`` to ``recipients`` and sign the package.

    ``provenance`` holds ``base_model`` {ref, weights_sha256}, ``tenant_id``,
    ``training_client_id`` and ``ledger`` {ledger_id, partition, checkpoint (SignedCheckpoint
    or its dict, or None), inclusion_proofs}; the adapter section is filled in here.
    ``dp_certificate`` is the §2.3 section (see ``dp_certificate_from_metrics``).
    Raises ValueError/FileNotFoundError on bad input; writes ``out_path`` atomically.
    """
    if not isinstance(signer, HybridSigningKey):
        raise TypeError("signer must be a HybridSigningKey")
    if not recipients or len(recipients) > MAX_RECIPIENTS:
        raise ValueError(f"need 1..{MAX_RECIPIENTS} recipients (nobody could decrypt a package without one)")
    if not all(isinstance(r, HybridKemPublicKey) for r in recipients):
        raise TypeError("recipients must be HybridKemPublicKey objects")
    if len({r.key_id for r in recipients}) != len(recipients):
        raise ValueError("duplicate recipient keys")

    files = _adapter_files(adapter_dir)
    try:
        adapter_config = _json.loads(files["adapter_config.json"], "adapter_config.json")
    except StrictJSONError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(adapter_config, dict):
        raise ValueError("adapter_config.json is not a JSON object")
    prov = _prepare_provenance(provenance, adapter_config)
    try:
        cert = validate_dp_certificate(_json.loads(_json.dumps(dict(dp_certificate)), "dp_certificate"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid dp_certificate: {exc}") from None

    package_id = "tssp_" + secrets.token_hex(16)
    when = (created_at or datetime.now(UTC)).astimezone(UTC)
    package_section = {
        "tssp_version": TSSP_VERSION,
        "id": package_id,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "encryption": dict(ENCRYPTION),
    }

    # A fresh random key per package: nothing else is ever encrypted under it.
    package_key = secrets.token_bytes(PACKAGE_KEY_LEN)
    inner = write_archive([(name, files[name]) for name in ADAPTER_FILES])
    weights_enc = aead.seal(package_key, inner, WEIGHTS_AAD_TENANT, package_id)
    aad = _key_wrap_aad(package_id)
    wrapped = {r.key_id: b64encode(wrap_key(r, package_key, aad)) for r in recipients}
    del package_key
    recipients_json = _json.dumps(
        {"format": RECIPIENTS_FORMAT, "package_id": package_id, "recipients": wrapped}
    )

    subjects = {RECIPIENTS_NAME: _sha256(recipients_json), WEIGHTS_NAME: _sha256(weights_enc)}
    statement = build_statement(subjects, package_section, prov, cert)
    payload = _json.dumps(statement)
    Statement.parse(payload)  # the signer never signs what a verifier would refuse
    envelope = sign_envelope(IN_TOTO_PAYLOAD_TYPE, payload, signer).to_json()
    blob = write_archive(
        [(MANIFEST_NAME, envelope), (RECIPIENTS_NAME, recipients_json), (WEIGHTS_NAME, weights_enc)]
    )

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tssp-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # the package is encrypted and signed: safe to share
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return PackageInfo(
        path=out,
        package_id=package_id,
        size=len(blob),
        signer_key_id=signer.key_id,
        recipients=tuple(sorted(wrapped)),
        subjects=subjects,
        manifest_sha256=_sha256(envelope),
    )


# --------------------------------------------------------------------------- parse + verify


def _open_container(data: bytes | memoryview) -> tuple[Archive, memoryview]:
    archive = read_archive(data)  # 1: bad_container
    names = archive.names
    if MANIFEST_NAME not in names:  # 2
        raise ContainerError(f"package has no {MANIFEST_NAME}", code="missing_file", file=MANIFEST_NAME)
    if names[0] != MANIFEST_NAME or names[1:] != sorted(names[1:], key=lambda n: n.encode()):
        raise ContainerError(
            f"members must be {MANIFEST_NAME} first, then sorted by name; got {names}", code="bad_container"
        )
    manifest = archive.entries[0].data
    if len(manifest) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes", file=MANIFEST_NAME)
    return archive, manifest


def _parse_recipients(raw: memoryview, package_id: str) -> dict[str, bytes]:
    def bad(msg: str) -> ManifestError:
        return ManifestError(f"{RECIPIENTS_NAME}: {msg}", code="bad_recipients", file=RECIPIENTS_NAME)

    if len(raw) > MAX_RECIPIENTS_BYTES:
        raise bad(f"larger than {MAX_RECIPIENTS_BYTES} bytes")
    try:
        d = exact_keys(
            _json.loads(raw, RECIPIENTS_NAME), {"format", "package_id", "recipients"}, RECIPIENTS_NAME
        )
        if d["format"] != RECIPIENTS_FORMAT:
            raise StrictJSONError(f"format must be {RECIPIENTS_FORMAT!r}")
        if d["package_id"] != package_id:
            raise StrictJSONError(f"package_id {d['package_id']!r} is not this package's {package_id!r}")
        recips = d["recipients"]
        if not isinstance(recips, dict) or not 1 <= len(recips) <= MAX_RECIPIENTS:
            raise StrictJSONError(f"recipients must be an object of 1..{MAX_RECIPIENTS} entries")
        out: dict[str, bytes] = {}
        for kid, b64 in recips.items():
            if not KEY_ID_RE.fullmatch(kid):
                raise StrictJSONError("recipient key ids must be 32 lowercase hex")
            blob = b64decode_strict(b64, f"recipient {kid}")
            if len(blob) != _WRAPPED_LEN or blob[1:17].hex() != kid:
                raise StrictJSONError(f"wrapped key of {kid} is malformed or names another key")
            out[kid] = blob
    except StrictJSONError as exc:
        raise bad(str(exc)) from None
    return out


def _check_ledger(
    stmt: Statement, cp_trust: Mapping[str, HybridPublicKey], revoked: frozenset[str]
) -> tuple[SignedCheckpoint | None, tuple[InclusionProofFile, ...]]:
    ev = stmt.ledger
    cp = ev.checkpoint
    if cp is None:
        return None, ()
    expected = ledger_origin(ev.ledger_id, ev.partition)
    if cp.origin != expected:
        raise ProofError(f"checkpoint origin {cp.origin!r} is not {expected!r}", code="bad_checkpoint")
    key = cp_trust.get(cp.key_id)
    if key is None or cp.key_id in revoked:
        why = "revoked" if cp.key_id in revoked else "not trusted"
        raise SignerError(
            f"ledger checkpoint is signed by {cp.key_id}, which is {why} as a checkpoint signer",
            code="untrusted_signer",
            key_id=cp.key_id,
        )
    try:
        cp.verify(key)
    except (SignatureError, CheckpointKeyMismatch) as exc:
        raise ProofError(
            f"ledger checkpoint signature does not verify: {exc}", code="bad_checkpoint"
        ) from None
    for i, proof in enumerate(ev.proofs):
        if proof.checkpoint != cp:
            raise ProofError(f"inclusion proof {i} is not against the package's checkpoint", code="bad_proof")
        if not proof.verify_path():
            raise ProofError(
                f"inclusion proof {i} (leaf {proof.index}) does not lead to the signed root", code="bad_proof"
            )
    return cp, ev.proofs


def _verify_data(
    data: bytes | memoryview,
    trusted_signers: TrustedSigners,
    policy: Policy | None,
    revoked: Collection[str],
    checkpoint_signers: TrustedSigners | None,
) -> VerifiedPackage:
    trust = _trust_map(trusted_signers, "trusted_signers")
    cp_trust = trust if checkpoint_signers is None else _trust_map(checkpoint_signers, "checkpoint_signers")
    revoked_set = frozenset(revoked)

    archive, manifest = _open_container(data)  # 1, 2
    envelope = Envelope.parse(manifest)  # 3
    signer = envelope.verify(trust, revoked_set)  # 4, 5
    try:  # 6
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise StrictJSONError(f"payloadType must be {IN_TOTO_PAYLOAD_TYPE!r}")
        st = Statement.parse_envelope_payload(envelope.payload)
        subjects = Statement.parse_subjects(st)
    except StrictJSONError as exc:
        raise _manifest_error(exc) from None

    members = {e.name: e.data for e in archive.entries[1:]}
    for name in members:  # 7
        if name not in subjects:
            raise ContainerError(
                f"member {name!r} is not covered by the manifest", code="extra_file", file=name
            )
    for name in subjects:
        if name not in members:
            raise ContainerError(
                f"member {name!r} listed in the manifest is missing", code="missing_file", file=name
            )
    for name, digest in subjects.items():  # 8
        actual = _sha256(members[name])
        if actual != digest:
            raise DigestMismatch(
                f"{name}: SHA-256 {actual} differs from the signed digest {digest}",
                code="digest_mismatch",
                file=name,
            )
    archive.check_crcs()  # 9

    try:  # 10
        stmt = Statement.parse_predicate(st, subjects)
    except StrictJSONError as exc:
        raise _manifest_error(exc) from None
    wrapped = _parse_recipients(members[RECIPIENTS_NAME], stmt.package_id)  # 11
    checkpoint, proofs = _check_ledger(stmt, cp_trust, revoked_set)  # 12, 13

    policy_input = build_policy_input(
        signer_key_id=signer.key_id,
        package=stmt.package,
        provenance=stmt.provenance,
        dp_certificate=stmt.dp_certificate,
        recipients=list(wrapped),
        checkpoint_key_id=checkpoint.key_id if checkpoint else None,
        checkpoint_size=checkpoint.size if checkpoint else None,
        inclusion_proofs=len(proofs),
    )
    decision = policy.check(policy_input) if policy is not None else None  # 14
    return VerifiedPackage(
        package_id=stmt.package_id,
        created_at=str(stmt.package["created_at"]),
        signer_key_id=signer.key_id,
        subjects=subjects,
        provenance=stmt.provenance,
        dp_certificate=stmt.dp_certificate,
        recipients=tuple(sorted(wrapped)),
        checkpoint=checkpoint,
        inclusion_proofs=proofs,
        policy_input=policy_input,
        policy_decision=decision,
        statement=stmt.raw,
        _wrapped=wrapped,
        _weights=bytes(members[WEIGHTS_NAME]),
    )


def verify_package(
    path: PackageSource,
    trusted_signers: TrustedSigners,
    policy: Policy | None = None,
    *,
    revoked: Collection[str] = (),
    checkpoint_signers: TrustedSigners | None = None,
) -> VerifiedPackage:
    """Verify a package (file path or bytes); raise PackageError with the first failing check.

    ``trusted_signers``: key id -> HybridPublicKey (or an iterable of keys) allowed to sign
    packages; also used for the ledger checkpoint unless ``checkpoint_signers`` is given.
    ``revoked``: key ids refused even if present in a trusted map. ``policy``: evaluated
    last; None skips it (the EdgeLoader always evaluates one).
    """
    return _verify_data(_read_source(path), trusted_signers, policy, revoked, checkpoint_signers)


def _decrypt_adapter(
    verified: VerifiedPackage, recipient_private_key: HybridKemPrivateKey
) -> dict[str, bytes]:
    kid = recipient_private_key.key_id
    blob = verified._wrapped.get(kid)
    if blob is None:  # 15
        raise RecipientError(
            f"key {kid} is not a recipient of package {verified.package_id} "
            f"(recipients: {', '.join(verified.recipients)})",
            code="wrong_recipient",
            key_id=kid,
        )
    try:  # 16
        package_key = unwrap_key(recipient_private_key, blob, _key_wrap_aad(verified.package_id))
    except CryptoError as exc:
        code = "wrong_recipient" if exc.code == "wrong_recipient" else "key_unwrap_failed"
        raise RecipientError(f"package key does not unwrap: {exc}", code=code, key_id=kid) from None
    try:  # 17
        inner = aead.open(package_key, verified._weights, WEIGHTS_AAD_TENANT, verified.package_id)
    except (CryptoError, ValueError) as exc:
        raise PayloadError(
            f"{WEIGHTS_NAME} does not decrypt: {exc}", code="decryption_failed", file=WEIGHTS_NAME
        ) from None
    finally:
        del package_key
    try:  # 18
        archive = read_archive(inner)
        archive.check_crcs()
    except ContainerError as exc:
        raise PayloadError(
            f"decrypted adapter archive: {exc}", code="bad_payload", file=WEIGHTS_NAME
        ) from None
    if archive.names != list(ADAPTER_FILES):
        raise PayloadError(
            f"decrypted adapter holds {archive.names}, expected {list(ADAPTER_FILES)}", code="bad_payload"
        )
    files = {e.name: bytes(e.data) for e in archive.entries}
    try:
        cfg = _json.loads(files["adapter_config.json"], "adapter_config.json")
    except StrictJSONError as exc:
        raise PayloadError(str(exc), code="bad_payload", file="adapter_config.json") from None
    if cfg != verified.adapter_config:
        raise PayloadError("adapter_config.json differs from the signed adapter config", code="bad_payload")
    return files


def unpack_package(
    path: PackageSource,
    recipient_private_key: HybridKemPrivateKey,
    out_dir: str | os.PathLike[str],
    trusted_signers: TrustedSigners,
    policy: Policy | None = None,
    *,
    revoked: Collection[str] = (),
    checkpoint_signers: TrustedSigners | None = None,
) -> UnpackedPackage:
    """Verify, then decrypt the adapter into ``out_dir`` (created 0700; files 0600, never overwritten)."""
    if not isinstance(recipient_private_key, HybridKemPrivateKey):
        raise TypeError("recipient_private_key must be a HybridKemPrivateKey")
    verified = verify_package(
        path, trusted_signers, policy, revoked=revoked, checkpoint_signers=checkpoint_signers
    )
    files = _decrypt_adapter(verified, recipient_private_key)
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ADAPTER_FILES:  # check all first: never leave a half-written adapter behind
        if os.path.lexists(out / name):
            raise FileExistsError(errno.EEXIST, "refusing to overwrite", str(out / name))
    written: dict[str, Path] = {}
    for name in ADAPTER_FILES:
        target = out / name
        # O_EXCL: never overwrite (or follow a planted symlink to) an existing file.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(files[name])
        written[name] = target
    return UnpackedPackage(verified, out, written)


# --------------------------------------------------------------------------- inspect


def inspect_package(path: PackageSource) -> dict[str, Any]:
    """What a package claims, without keys and WITHOUT verifying its signature.

    Raises PackageError only when the container or manifest cannot be read at all.
    """
    data = _read_source(path)
    archive, manifest = _open_container(data)
    envelope = Envelope.parse(manifest)
    try:
        st = Statement.parse_envelope_payload(envelope.payload)
    except StrictJSONError as exc:
        raise _manifest_error(exc) from None
    try:
        subjects = Statement.parse_subjects(st)
    except StrictJSONError:
        subjects = {}
    members = {e.name: e.data for e in archive.entries}
    predicate = st.get("predicate") if isinstance(st.get("predicate"), dict) else {}
    package = predicate.get("package") if isinstance(predicate.get("package"), dict) else {}
    provenance = (
        dict(predicate.get("provenance") or {}) if isinstance(predicate.get("provenance"), dict) else {}
    )
    ledger = provenance.get("ledger")
    if isinstance(ledger, dict):
        cp = ledger.get("checkpoint")
        summary: dict[str, Any] = {
            "ledger_id": ledger.get("ledger_id"),
            "partition": ledger.get("partition"),
            "checkpoint": None,
            "inclusion_proofs": [],
        }
        try:
            if cp is not None:
                scp = SignedCheckpoint.from_dict(cp)
                summary["checkpoint"] = {
                    "origin": scp.origin, "size": scp.size, "root": scp.root.hex(),
                    "key_id": scp.key_id, "timestamp_ms": scp.ts_ms,
                }  # fmt: skip
            summary["inclusion_proofs"] = [
                {"index": p.get("index"), "leaf_hash": p.get("leaf_hash")}
                for p in ledger.get("inclusion_proofs") or []
                if isinstance(p, dict)
            ]
        except Exception as exc:  # inspect reports, it does not judge
            summary["checkpoint_error"] = str(exc)
        provenance["ledger"] = summary
    recipients: list[str] = []
    raw_recipients = members.get(RECIPIENTS_NAME)
    if raw_recipients is not None:
        try:
            obj = _json.loads(raw_recipients, RECIPIENTS_NAME)
            listed = obj.get("recipients") if isinstance(obj, dict) else None
            recipients = sorted(listed) if isinstance(listed, dict) else []
        except StrictJSONError:
            recipients = []
    return {
        "format": f"tssp/v{package.get('tssp_version', '?')}",
        "package_id": package.get("id"),
        "created_at": package.get("created_at"),
        "signature_verified": False,
        "payload_type": envelope.payload_type,
        "signer_key_ids": [s.keyid for s in envelope.signatures],
        "predicate_type": st.get("predicateType"),
        "members": [
            {"name": e.name, "size": len(e.data), "sha256": _sha256(e.data)} for e in archive.entries
        ],
        "subjects": [
            {"name": n, "sha256": d, "matches": n in members and _sha256(members[n]) == d}
            for n, d in subjects.items()
        ],
        "expected_subjects": list(SUBJECT_NAMES),
        "package": package,
        "provenance": provenance,
        "dp_certificate": predicate.get("dp_certificate"),
        "recipients": recipients,
    }
