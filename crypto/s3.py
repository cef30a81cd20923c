"""S3-compatible storage backend (SeaweedFS on the node; AWS S3, MinIO... work too).

A deliberately small AWS Signature V4 client on top of httpx (already a core
dependency of the SDK) instead of boto3: the store needs six calls (PUT, GET,
HEAD, DELETE, ListObjectsV2, multipart upload), and boto3+botocore would add
~25 MB of dependencies and their own HTTP stack to the server image.

Path-style addressing (``{endpoint}/{bucket}/{key}``), payload hashes are
signed (``x-amz-content-sha256`` = SHA-256 of the body, never UNSIGNED-PAYLOAD),
objects above ``part_size`` go through multipart upload so memory stays bounded
by one part. Objects are ciphertext already; transport security (https) is the
deployment's choice.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import io
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO
from urllib.parse import quote, urlsplit

import httpx

from .errors import StorageError
from .storage import check_key

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MIN_PART_SIZE = 5 * 1024 * 1024


def _q(s: str, safe: str = "-_.~") -> str:
    return quote(s, safe=safe)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class _ResponseReader(io.RawIOBase):
    """Adapts a streaming httpx response to a readable file object."""

    def __init__(self, resp: httpx.Response) -> None:
        self._it = resp.iter_bytes()
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class S3Backend:
    """``StorageBackend`` over an S3-compatible HTTP API with SigV4 authentication."""

    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        prefix: str = "",
        part_size: int = 64 * 1024 * 1024,
        timeout: float = 60.0,
        spool_dir: str | None = None,
        anonymous: bool = False,
        client: httpx.Client | None = None,
    ) -> None:
        self.endpoint = endpoint_url.rstrip("/")
        self.bucket = bucket
        self.region = region
        self.prefix = prefix.strip("/")
        if part_size < MIN_PART_SIZE:
            raise ValueError("part_size must be at least 5 MiB (S3 minimum for all but the last part)")
        self.part_size = part_size
        self.spool_dir = spool_dir
        self.access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID")
        self.secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not (self.access_key and self.secret_key) and not anonymous:
            raise ValueError(
                "S3 credentials missing: pass access_key/secret_key (or AWS_* env), or anonymous=True"
            )
        self._anonymous = not (self.access_key and self.secret_key)
        self._host = urlsplit(self.endpoint).netloc
        self._base_path = urlsplit(self.endpoint).path.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._client.close()

    # -- signing -------------------------------------------------------------

    def _path(self, key: str | None) -> str:
        parts = [self.bucket]
        if key is not None:
            check_key(key)
            if self.prefix:
                parts.append(self.prefix)
            parts.append(key)
        return self._base_path + "/" + _q("/".join(parts), safe="/-_.~")

    def _headers(
        self, method: str, path: str, query: str, payload_sha256: str, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        now = _dt.datetime.now(_dt.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        headers = {"host": self._host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256}
        for k, v in (extra or {}).items():
            headers[k.lower()] = v
        if self._anonymous:
            return headers
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                path,
                query,
                "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
                ";".join(names),
                payload_sha256,
            ]
        )
        day = amz_date[:8]
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        assert self.secret_key is not None
        k = _hmac(("AWS4" + self.secret_key).encode(), day)
        for part in (self.region, "s3", "aws4_request"):
            k = _hmac(k, part)
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return headers

    @staticmethod
    def _query(params: dict[str, str] | None) -> str:
        if not params:
            return ""
        return "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(params.items()))

    def _request(
        self,
        method: str,
        key: str | None,
        *,
        params: dict[str, str] | None = None,
        body: bytes = b"",
        extra: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        path = self._path(key)
        query = self._query(params)
        headers = self._headers(
            method, path, query, hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256, extra
        )
        url = self.endpoint.removesuffix(self._base_path) + path + (f"?{query}" if query else "")
        try:
            resp = self._client.request(method, url, headers=headers, content=body or None)
        except httpx.HTTPError as e:
            raise StorageError(f"S3 {method} {key!r} failed: {e}", code="storage_unreachable") from None
        if resp.status_code == 404 and method in ("GET", "HEAD"):
            raise FileNotFoundError(key)
        if resp.status_code not in ok:
            self._raise(method, key, resp)
        return resp

    @staticmethod
    def _raise(method: str, key: str | None, resp: httpx.Response) -> None:
        code, message = "storage_error", resp.text[:200]
        try:
            root = ET.fromstring(resp.content)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
        except ET.ParseError:
            pass
        raise StorageError(
            f"S3 {method} {key!r}: HTTP {resp.status_code} {code}: {message}",
            code=code,
            status=resp.status_code,
        )

    # -- bucket ----------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (SeaweedFS also does this with ``weed mini -bucket=``)."""
        resp = self._request("PUT", None, ok=(200, 409))
        if resp.status_code == 409:
            try:
                code = ET.fromstring(resp.content).findtext("Code")
            except ET.ParseError:
                code = None
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                self._raise("PUT", None, resp)

    # -- StorageBackend ----------------------------------------------------------

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data).cast("B")
        if len(mv) <= self.part_size:
            self._request("PUT", key, body=bytes(mv))
            return
        parts = (bytes(mv[i : i + self.part_size]) for i in range(0, len(mv), self.part_size))
        self._multipart(key, parts)

    def _multipart(self, key: str, parts: Iterator[bytes]) -> None:
        resp = self._request("POST", key, params={"uploads": ""})
        upload_id = ET.fromstring(resp.content).findtext(f"{_NS}UploadId") or ET.fromstring(
            resp.content
        ).findtext("UploadId")
        if not upload_id:
            raise StorageError(f"S3 CreateMultipartUpload for {key!r} returned no UploadId")
        try:
            etags = []
            for number, body in enumerate(parts, start=1):
                r = self._request(
                    "PUT", key, params={"partNumber": str(number), "uploadId": upload_id}, body=body
                )
                etags.append((number, r.headers.get("etag", "")))
            xml = (
                "<CompleteMultipartUpload>"
                + "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in etags)
                + "</CompleteMultipartUpload>"
            )
            r = self._request("POST", key, params={"uploadId": upload_id}, body=xml.encode())
            if b"<Error>" in r.content:  # S3 may report a failed completion inside a 200
                self._raise("POST", key, r)
        except BaseException:
            try:
                self._request("DELETE", key, params={"uploadId": upload_id}, ok=(200, 204, 404))
            except StorageError:
                pass
            raise

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        check_key(key)
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            yield spool  # type: ignore[misc]
            size = spool.tell()
            spool.seek(0)
            if size <= self.part_size:
                self._request("PUT", key, body=spool.read())
            else:
                self._multipart(key, iter(lambda: spool.read(self.part_size), b""))

    def get_bytes(self, key: str) -> bytes:
        return self._request("GET", key).content

    @contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        headers = self._headers("GET", path, "", _EMPTY_SHA256)
        url = self.endpoint.removesuffix(self._base_path) + path
        try:
            with self._client.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 404:
                    raise FileNotFoundError(key)
                if resp.status_code != 200:
                    resp.read()
                    self._raise("GET", key, resp)
                yield io.BufferedReader(_ResponseReader(resp), buffer_size=1 << 20)  # type: ignore[misc]
        except httpx.HTTPError as e:
            raise StorageError(f"S3 GET {key!r} failed: {e}", code="storage_unreachable") from None

    def exists(self, key: str) -> bool:
        try:
            self._request("HEAD", key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> bool:
        # S3 DELETE answers 204 whether or not the key existed: HEAD first for an honest bool.
        existed = self.exists(key)
        self._request("DELETE", key, ok=(200, 204))
        return existed

    def list(self, prefix: str) -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": full}
            if token:
                params["continuation-token"] = token
            root = ET.fromstring(self._request("GET", None, params=params).content)
            for c in root.iter(f"{_NS}Contents"):
                k = c.findtext(f"{_NS}Key")
                if k:
                    keys.append(k[strip:])
            if root.findtext(f"{_NS}IsTruncated") != "true":
                break
            token = root.findtext(f"{_NS}NextContinuationToken")
            if not token:
                break
        return sorted(keys)


__all__ = ["S3Backend"]
