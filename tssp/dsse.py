"""DSSE v1 envelopes (https://github.com/secure-systems-lab/dsse) signed with the hybrid key.

The signature is over the Pre-Authentication Encoding, never over the JSON, so the
envelope's own serialisation needs no canonical form::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from tensafe.crypto.errors import SignatureError
from tensafe.crypto.signing import HybridPublicKey, HybridSigningKey

from ._json import KEY_ID_RE, StrictJSONError, b64decode_strict, b64encode, exact_keys, loads
from .errors import ManifestError, SignerError

__all__ = ["IN_TOTO_PAYLOAD_TYPE", "MAX_SIGNATURES", "Envelope", "Signature", "pae", "sign_envelope"]

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_SIGNATURES = 8


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_json(self) -> bytes:
        # Compact JSON with sorted keys: the one canonical form parse() accepts.
        return json.dumps(
            {
                "payload": b64encode(self.payload),
                "payloadType": self.payload_type,
                "signatures": [{"keyid": s.keyid, "sig": b64encode(s.sig)} for s in self.signatures],
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("ascii")

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Envelope:
        """Strict parse; raises ManifestError(bad_manifest)."""
        try:
            obj = exact_keys(
                loads(data, "manifest envelope"), {"payload", "payloadType", "signatures"}, "envelope"
            )
            if not isinstance(obj["payloadType"], str):
                raise StrictJSONError("envelope: payloadType must be a string")
            payload = b64decode_strict(obj["payload"], "envelope: payload")
            sigs = obj["signatures"]
            if not isinstance(sigs, list) or not 1 <= len(sigs) <= MAX_SIGNATURES:
                raise StrictJSONError(f"envelope: signatures must be a list of 1..{MAX_SIGNATURES}")
            out: list[Signature] = []
            for i, s in enumerate(sigs):
                s = exact_keys(s, {"keyid", "sig"}, f"envelope: signatures[{i}]")
                if not isinstance(s["keyid"], str) or not KEY_ID_RE.fullmatch(s["keyid"]):
                    raise StrictJSONError(f"envelope: signatures[{i}].keyid must be 32 lowercase hex")
                out.append(
                    Signature(s["keyid"], b64decode_strict(s["sig"], f"envelope: signatures[{i}].sig"))
                )
            keyids = [s.keyid for s in out]
            if keyids != sorted(set(keyids)):
                raise StrictJSONError("envelope: signatures must have distinct keyids in ascending order")
            env = cls(obj["payloadType"], payload, tuple(out))
            # The envelope itself is not signed (DSSE signs PAE only): insist on its one
            # canonical serialisation so that nobody can re-encode a package without changing
            # what it means (whitespace, key order, base64 spelling).
            if env.to_json() != bytes(data):
                raise StrictJSONError("envelope: not in canonical form (compact JSON, sorted keys)")
        except StrictJSONError as exc:
            raise ManifestError(str(exc), code="bad_manifest", file="manifest.dsse.json") from None
        return env

    def verify(
        self, trusted: Mapping[str, HybridPublicKey], revoked: frozenset[str] = frozenset()
    ) -> HybridPublicKey:
        """Return the trusted key whose signature verifies; else SignerError with a precise code.

        ``untrusted_signer``: no signature names a trusted, non-revoked key.
        ``bad_signature``: a trusted key is named but its signature does not verify.
        """
        candidates = [s for s in self.signatures if s.keyid in trusted and s.keyid not in revoked]
        if not candidates:
            named = ", ".join(s.keyid for s in self.signatures)
            rev = [s.keyid for s in self.signatures if s.keyid in revoked]
            why = f"revoked key(s) {', '.join(rev)}" if rev else "no trusted key"
            raise SignerError(
                f"manifest is signed by {named}: {why} (trusted: {', '.join(sorted(trusted)) or 'none'})",
                code="untrusted_signer",
                key_id=self.signatures[0].keyid,
                file="manifest.dsse.json",
            )
        message = pae(self.payload_type, self.payload)
        failures: list[str] = []
        for s in candidates:
            try:
                trusted[s.keyid].verify(message, s.sig)
            except SignatureError as exc:
                failures.append(f"{s.keyid}: {exc.code}")
                continue
            return trusted[s.keyid]
        raise SignerError(
            f"manifest signature by a trusted key does not verify ({'; '.join(failures)})",
            code="bad_signature",
            key_id=candidates[0].keyid,
            file="manifest.dsse.json",
        )


def sign_envelope(payload_type: str, payload: bytes, signer: HybridSigningKey) -> Envelope:
    return Envelope(
        payload_type, payload, (Signature(signer.key_id, signer.sign(pae(payload_type, payload))),)
    )
