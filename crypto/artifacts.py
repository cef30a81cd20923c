"""Encrypted artifact store (checkpoints, adapters, datasets, exports).

Each artifact is two objects in the backend, under a per-tenant directory
``t-<first 32 hex of SHA-256("tensafe/tenant-dir/v1\\0" || tenant)>`` (tenant
names do not appear in storage paths):

* ``<artifact_id>.bin``: ``"TSAR" | 0x01 | lp(tenant) | lp(artifact_id) | lp(dek_id) |
  AEAD stream`` (see ``tensafe.crypto.aead``; tenant and artifact id are in every
  chunk's AAD, the DEK id selects the key). lp = u32 length prefix.
* ``<artifact_id>.meta``: ``"TSAM" | 0x01 | lp(dek_id) | seal_field(dek, tenant,
  "artifact-meta/<artifact_id>", JSON)``. The JSON (kind, caller metadata,
  plaintext SHA-256, sizes) is encrypted because a plaintext hash in clear would
  let anyone with storage access confirm guesses of the content. Written
  after the data object, so an artifact exists only once both are durable.

Artifact ids look like ``art_<8 hex tenant tag>_<24 hex random>``; the tag lets
``get``/``delete`` refuse another tenant's id with ``TenantMismatch`` before
touching storage. ``content_sha256`` is checked on every read.

The store writes no ledger events itself: pass ``on_event(name, payload)``;
it is called after the change is durable with ``("ArtifactPut", ref.to_event())``,
``("ArtifactDeleted", {...})``, ``("ArtifactsPurged", {...})`` and
``("ArtifactIntegrityFailure", {..., "reason": code})``.
Exceptions from the hook propagate to the caller (the artifact stays stored).
All methods are synchronous.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from . import aead
from .errors import ArtifactNotFound, DecryptionError, IntegrityError, TenantMismatch
from .fields import open_field, seal_field
from .keyring import Keyring
from .storage import LocalDirBackend, StorageBackend

DEK_PURPOSE = "artifacts"
_DATA_MAGIC = b"TSAR"
_META_MAGIC = b"TSAM"
_FORMAT = 1
_ID_RE = re.compile(r"^art_([0-9a-f]{8})_([0-9a-f]{24})$")

EventHook = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ArtifactRef:
    artifact_id: str
    tenant_id: str
    kind: str
    dek_id: str
    content_sha256: str  # hex SHA-256 of the plaintext
    ciphertext_sha256: str  # hex SHA-256 of the stored .bin object
    size: int  # plaintext bytes
    ciphertext_size: int = 0
    created_at: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_event(self) -> dict[str, Any]:
        return asdict(self)


def _tenant_hash(tenant_id: str) -> str:
    return hashlib.sha256(b"tensafe/tenant-dir/v1\x00" + tenant_id.encode("utf-8")).hexdigest()


def tenant_dir(tenant_id: str) -> str:
    return "t-" + _tenant_hash(tenant_id)[:32]


def _lp(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">I", len(b)) + b


def _read_lp(buf: memoryview, off: int) -> tuple[str, int]:
    if off + 4 > len(buf):
        raise DecryptionError("artifact header truncated", code="malformed")
    (n,) = struct.unpack_from(">I", buf, off)
    if n > 4096 or off + 4 + n > len(buf):
        raise DecryptionError("artifact header malformed", code="malformed")
    return bytes(buf[off + 4 : off + 4 + n]).decode("utf-8"), off + 4 + n


class _HashingWriter:
    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes | memoryview) -> int:
        self.h.update(data)
        self.n += len(data)
        self.inner.write(data)
        return len(data)


class _HashingReader:
    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.h = hashlib.sha256()

    def readinto(self, b: memoryview) -> int:
        readinto = getattr(self.inner, "readinto", None)
        if readinto is not None:
            n = readinto(b) or 0
        else:
            data = self.inner.read(len(b))
            n = len(data)
            b[:n] = data
        self.h.update(b[:n])
        return n


class ArtifactStore:
    def __init__(
        self,
        keyring: Keyring,
        backend: StorageBackend,
        *,
        on_event: EventHook | None = None,
        chunk_size: int = aead.DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.keyring = keyring
        self.backend = backend
        self.on_event = on_event
        self.chunk_size = chunk_size

    @classmethod
    def local(cls, keyring: Keyring, root: str, **kw: Any) -> ArtifactStore:
        return cls(keyring, LocalDirBackend(root), **kw)

    # -- ids and keys ------------------------------------------------------------

    @staticmethod
    def new_artifact_id(tenant_id: str) -> str:
        return f"art_{_tenant_hash(tenant_id)[:8]}_{secrets.token_hex(12)}"

    def _check_id(self, tenant_id: str, artifact_id: str) -> str:
        m = _ID_RE.match(artifact_id) if isinstance(artifact_id, str) else None
        if m is None:
            raise ArtifactNotFound(f"{artifact_id!r} is not a valid artifact id", code="artifact_not_found")
        if m.group(1) != _tenant_hash(tenant_id)[:8]:
            raise TenantMismatch(f"artifact {artifact_id} belongs to another tenant, not {tenant_id!r}")
        return f"{tenant_dir(tenant_id)}/{artifact_id}"

    def _emit(self, name: str, payload: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(name, payload)

    # -- write -------------------------------------------------------------------

    def put(
        self,
        tenant_id: str,
        kind: str,
        data_or_stream: bytes | bytearray | memoryview | BinaryIO,
        metadata: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        """Encrypt and store; returns the reference to record (e.g. in the ledger)."""
        metadata = dict(metadata or {})
        json.dumps(metadata)  # fail early on non-JSON metadata, before anything is written
        artifact_id = self.new_artifact_id(tenant_id)
        base = f"{tenant_dir(tenant_id)}/{artifact_id}"
        dek_id, dek = self.keyring.data_key(tenant_id, DEK_PURPOSE)
        prefix = _DATA_MAGIC + bytes([_FORMAT]) + _lp(tenant_id) + _lp(artifact_id) + _lp(dek_id)

        if isinstance(data_or_stream, bytes | bytearray | memoryview):
            src = memoryview(data_or_stream).cast("B")
            content_sha = hashlib.sha256(src).hexdigest()
            size = len(src)
            buf = bytearray(len(prefix) + aead.ciphertext_length(size, self.chunk_size))
            buf[: len(prefix)] = prefix
            aead.seal_into(
                dek, src, memoryview(buf)[len(prefix) :], tenant_id, artifact_id, chunk_size=self.chunk_size
            )
            ct_sha = hashlib.sha256(buf).hexdigest()
            ct_size = len(buf)
            self.backend.put_bytes(base + ".bin", buf)
        else:
            reader = _HashingReader(data_or_stream)
            with self.backend.writer(base + ".bin") as f:
                w = _HashingWriter(f)
                w.write(prefix)
                stats = aead.encrypt_stream(
                    dek, reader, w, tenant_id, artifact_id, chunk_size=self.chunk_size
                )
            content_sha, size = reader.h.hexdigest(), stats.plaintext_length
            ct_sha, ct_size = w.h.hexdigest(), w.n

        ref = ArtifactRef(
            artifact_id=artifact_id,
            tenant_id=tenant_id,
            kind=kind,
            dek_id=dek_id,
            content_sha256=content_sha,
            ciphertext_sha256=ct_sha,
            size=size,
            ciphertext_size=ct_size,
            created_at=time.time(),
            metadata=metadata,
        )
        meta = {k: v for k, v in asdict(ref).items() if k not in ("tenant_id", "artifact_id")}
        sealed = seal_field(dek, tenant_id, "artifact-meta/" + artifact_id, json.dumps(meta).encode())
        self.backend.put_bytes(base + ".meta", _META_MAGIC + bytes([_FORMAT]) + _lp(dek_id) + sealed)
        self._emit("ArtifactPut", ref.to_event())
        return ref

    # -- read --------------------------------------------------------------------

    def info(self, tenant_id: str, artifact_id: str) -> ArtifactRef:
        """The artifact's reference (decrypts only the small .meta object)."""
        base = self._check_id(tenant_id, artifact_id)
        try:
            raw = memoryview(self.backend.get_bytes(base + ".meta"))
        except FileNotFoundError:
            raise ArtifactNotFound(f"tenant {tenant_id!r} has no artifact {artifact_id}") from None
        if bytes(raw[:4]) != _META_MAGIC or raw[4] != _FORMAT:
            raise DecryptionError(f"artifact {artifact_id}: bad metadata header", code="malformed")
        dek_id, off = _read_lp(raw, 5)
        dek = self.keyring.dek(tenant_id, dek_id)
        meta = json.loads(open_field(dek, tenant_id, "artifact-meta/" + artifact_id, bytes(raw[off:])))
        return ArtifactRef(artifact_id=artifact_id, tenant_id=tenant_id, **meta)

    def _parse_data_header(self, tenant_id: str, artifact_id: str, ref: ArtifactRef, head: memoryview) -> int:
        if bytes(head[:4]) != _DATA_MAGIC or len(head) < 5 or head[4] != _FORMAT:
            raise DecryptionError(f"artifact {artifact_id}: bad data header", code="malformed")
        owner, off = _read_lp(head, 5)
        stored_id, off = _read_lp(head, off)
        dek_id, off = _read_lp(head, off)
        if owner != tenant_id:
            # Storage-level splice: another tenant's object placed under this tenant.
            self._integrity_failure(tenant_id, artifact_id, "tenant_mismatch")
            raise TenantMismatch(f"stored object for {artifact_id} belongs to another tenant")
        if stored_id != artifact_id or dek_id != ref.dek_id:
            self._integrity_failure(tenant_id, artifact_id, "header_mismatch")
            raise IntegrityError(
                f"artifact {artifact_id}: data object header does not match", code="header_mismatch"
            )
        return off

    def _integrity_failure(self, tenant_id: str, artifact_id: str, reason: str) -> None:
        self._emit(
            "ArtifactIntegrityFailure", {"tenant_id": tenant_id, "artifact_id": artifact_id, "reason": reason}
        )

    def get(self, tenant_id: str, artifact_id: str) -> bytes:
        """Decrypt, authenticate and hash-check the whole artifact into memory."""
        ref = self.info(tenant_id, artifact_id)
        base = self._check_id(tenant_id, artifact_id)
        try:
            blob = memoryview(self.backend.get_bytes(base + ".bin"))
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {artifact_id}: data object missing") from None
        off = self._parse_data_header(tenant_id, artifact_id, ref, blob[:8192])
        dek = self.keyring.dek(tenant_id, ref.dek_id)
        try:
            plaintext = aead.open(dek, blob[off:], tenant_id, artifact_id)
        except DecryptionError as e:
            self._integrity_failure(tenant_id, artifact_id, e.code)
            raise
        if hashlib.sha256(plaintext).hexdigest() != ref.content_sha256:
            self._integrity_failure(tenant_id, artifact_id, "content_hash_mismatch")
            raise IntegrityError(
                f"artifact {artifact_id}: content hash mismatch", code="content_hash_mismatch"
            )
        return plaintext

    def get_to(self, tenant_id: str, artifact_id: str, writer: BinaryIO) -> ArtifactRef:
        """Stream-decrypt into ``writer`` (constant memory). On error, discard what was written."""
        ref = self.info(tenant_id, artifact_id)
        base = self._check_id(tenant_id, artifact_id)
        dek = self.keyring.dek(tenant_id, ref.dek_id)
        h = hashlib.sha256()

        class _Tee:
            def write(self, data: bytes | memoryview) -> int:
                h.update(data)
                return writer.write(data) or len(data)

        try:
            with self.backend.reader(base + ".bin") as f:
                # Header = magic+version, then three length-prefixed strings; read exactly that much.
                hdr = bytearray(_read_exact(f, 5, artifact_id))
                for _ in range(3):
                    (n,) = struct.unpack(">I", _read_exact(f, 4, artifact_id))
                    if n > 4096:
                        raise DecryptionError(f"artifact {artifact_id}: header malformed", code="malformed")
                    hdr += struct.pack(">I", n) + _read_exact(f, n, artifact_id)
                self._parse_data_header(tenant_id, artifact_id, ref, memoryview(hdr))
                aead.decrypt_stream(dek, f, _Tee(), tenant_id, artifact_id)
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {artifact_id}: data object missing") from None
        except DecryptionError as e:
            self._integrity_failure(tenant_id, artifact_id, e.code)
            raise
        if h.hexdigest() != ref.content_sha256:
            self._integrity_failure(tenant_id, artifact_id, "content_hash_mismatch")
            raise IntegrityError(
                f"artifact {artifact_id}: content hash mismatch", code="content_hash_mismatch"
            )
        return ref

    def list(self, tenant_id: str) -> list[ArtifactRef]:
        prefix = tenant_dir(tenant_id) + "/"
        refs = []
        for key in self.backend.list(prefix):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".meta"):
                refs.append(self.info(tenant_id, name[: -len(".meta")]))
        return sorted(refs, key=lambda r: (r.created_at, r.artifact_id))

    def purge_tenant(self, tenant_id: str) -> int:
        """Delete every stored object of a tenant (no keys needed; use after ``shred_tenant``).

        Shredding already made the ciphertext unreadable; this reclaims the space.
        Returns the number of objects removed.
        """
        removed = 0
        keys = self.backend.list(tenant_dir(tenant_id) + "/")
        for key in sorted(keys, key=lambda k: not k.endswith(".meta")):  # metadata first, as in delete
            removed += bool(self.backend.delete(key))
        if removed:
            self._emit("ArtifactsPurged", {"tenant_id": tenant_id, "objects": removed})
        return removed

    def delete(self, tenant_id: str, artifact_id: str) -> bool:
        """Remove both objects (metadata first, so a half-deleted artifact is invisible)."""
        base = self._check_id(tenant_id, artifact_id)
        existed = self.backend.delete(base + ".meta")
        existed = self.backend.delete(base + ".bin") or existed
        if existed:
            self._emit("ArtifactDeleted", {"tenant_id": tenant_id, "artifact_id": artifact_id})
        return existed


def _read_exact(f: BinaryIO, n: int, artifact_id: str) -> bytes:
    data = b""
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            raise DecryptionError(f"artifact {artifact_id}: header truncated", code="malformed")
        data += more
    return data


__all__ = ["ArtifactRef", "ArtifactStore", "LocalDirBackend", "StorageBackend", "tenant_dir"]
