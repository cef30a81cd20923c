"""`tensafe package ...`: keygen, create, inspect, verify, unpack (docs/TSSP_SPEC.md §10).

Exit status: 0 ok, 1 the package was refused (its error code is printed), 2 usage
errors (bad arguments, unreadable or wrong-kind key files, invalid inputs).
Key files hold the raw key bytes of docs/CRYPTO.md, like the node's ``keys/*.pub``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def add_commands(sub: argparse._SubParsersAction) -> None:
    pkg = sub.add_parser("package", help="build, inspect, verify and unpack TSSP adapter packages")
    psub = pkg.add_subparsers(dest="package_cmd", required=True)

    k = psub.add_parser("keygen", help="generate hybrid signing and KEM key pairs")
    k.add_argument(
        "--out", required=True, metavar="PREFIX", help="writes PREFIX.sign.key/.pub, PREFIX.kem.key/.pub"
    )
    k.add_argument("--force", action="store_true", help="overwrite existing key files")
    k.set_defaults(func=_keygen)

    c = psub.add_parser("create", help="encrypt and sign a PEFT adapter directory")
    c.add_argument(
        "--adapter", required=True, help="directory with adapter_config.json + adapter_model.safetensors"
    )
    c.add_argument("--out", required=True, help="package file to write (.tssp)")
    c.add_argument("--signing-key", required=True, help="hybrid signing private key file")
    c.add_argument(
        "--recipient", action="append", required=True, help="recipient KEM public key file (repeat)"
    )
    c.add_argument("--provenance", required=True, help="provenance JSON file (docs/TSSP_SPEC.md §2.2)")
    c.add_argument(
        "--dp-certificate", required=True, help="DP certificate JSON file (§2.3) or DPTrainer.dp_metrics()"
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=_create)

    i = psub.add_parser("inspect", help="show what a package claims (no keys, signature NOT verified)")
    i.add_argument("package")
    i.add_argument("--json", action="store_true", help="full JSON")
    i.set_defaults(func=_inspect)

    def trust(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--trusted",
            action="append",
            default=[],
            required=True,
            help="trusted signer public key file (repeat)",
        )
        p.add_argument(
            "--checkpoint-signer",
            action="append",
            default=[],
            help="trusted ledger checkpoint signer (default: --trusted)",
        )
        p.add_argument(
            "--revoked", action="append", default=[], metavar="KEY_ID", help="refuse this signer key id"
        )
        p.add_argument(
            "--policy", action="append", default=[], metavar="FILE.rego", help="Rego v1 policy module(s)"
        )
        p.add_argument("--policy-data", help="JSON data document for --policy modules")
        p.add_argument(
            "--policy-json", help="parameters for the shipped default.rego (see docs/TSSP_SPEC.md §7)"
        )
        p.add_argument("--default-policy", action="store_true", help="apply the shipped default policy")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    v = psub.add_parser("verify", help="verify signature, digests, ledger proofs and the policy")
    v.add_argument("package")
    trust(v)
    v.set_defaults(func=_verify)

    u = psub.add_parser("unpack", help="verify, then decrypt the adapter for a recipient")
    u.add_argument("package")
    u.add_argument("--key", required=True, help="recipient KEM private key file")
    u.add_argument("--out", required=True, help="directory to write the adapter files into")
    trust(u)
    u.set_defaults(func=_unpack)


# --------------------------------------------------------------------------- key files


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _signing_key(path: str) -> Any:
    from tensafe.crypto.errors import KeyFormatError
    from tensafe.crypto.signing import HybridSigningKey

    try:
        return HybridSigningKey.from_bytes(_read(path))
    except KeyFormatError:
        raise UsageError(f"{path} is not a hybrid signing private key") from None


def _signing_public(path: str) -> Any:
    from tensafe.crypto.errors import KeyFormatError
    from tensafe.crypto.signing import HybridPublicKey

    try:
        return HybridPublicKey.from_bytes(_read(path))
    except KeyFormatError:
        raise UsageError(f"{path} is not a hybrid signing public key") from None


def _kem_public(path: str) -> Any:
    from tensafe.crypto.errors import KeyFormatError
    from tensafe.crypto.kem import HybridKemPublicKey

    try:
        return HybridKemPublicKey.from_bytes(_read(path))
    except KeyFormatError:
        raise UsageError(f"{path} is not a hybrid KEM public key") from None


def _kem_private(path: str) -> Any:
    from tensafe.crypto.errors import KeyFormatError
    from tensafe.crypto.kem import HybridKemPrivateKey

    try:
        return HybridKemPrivateKey.from_bytes(_read(path))
    except (KeyFormatError, ValueError):
        raise UsageError(f"{path} is not a hybrid KEM private key") from None


def _write_key(path: Path, data: bytes, private: bool, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600 if private else 0o644)
    except FileExistsError:
        raise UsageError(f"{path} exists (use --force to overwrite)") from None
    with os.fdopen(fd, "wb") as fh:
        if private:
            os.fchmod(fh.fileno(), 0o600)  # also when --force reuses an existing file
        fh.write(data)


def _json_file(path: str) -> Any:
    from ._json import StrictJSONError, loads

    try:
        return loads(_read(path), path)
    except StrictJSONError as exc:
        raise UsageError(str(exc)) from None


def _policy(args: argparse.Namespace) -> Any:
    from .policy import Policy, PolicyError

    chosen = sum(bool(x) for x in (args.policy, args.policy_json, args.default_policy))
    if chosen > 1:
        raise UsageError("give one of --policy, --policy-json, --default-policy")
    if args.policy_data and not args.policy:
        raise UsageError("--policy-data needs --policy")
    try:
        if args.policy:
            data = _json_file(args.policy_data) if args.policy_data else None
            return Policy.from_files(args.policy, data)
        if args.policy_json:
            cfg = _json_file(args.policy_json)
            if not isinstance(cfg, dict):
                raise UsageError("--policy-json must hold a JSON object")
            return Policy.from_dict(cfg)
        if args.default_policy:
            return Policy.default()
    except (PolicyError, OSError) as exc:
        raise UsageError(f"policy: {exc}") from None
    return None


def _trust_args(args: argparse.Namespace) -> dict[str, Any]:
    trusted = {k.key_id: k for k in (_signing_public(p) for p in args.trusted)}
    out: dict[str, Any] = {"trusted_signers": trusted, "revoked": tuple(args.revoked)}
    if args.checkpoint_signer:
        out["checkpoint_signers"] = {
            k.key_id: k for k in (_signing_public(p) for p in args.checkpoint_signer)
        }
    return out


def _run(fn: Any, args: argparse.Namespace) -> int:
    """Map failures to exit codes: refusals 1, usage 2."""
    from .errors import PackageError

    try:
        return int(fn(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PackageError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": exc.to_dict()}, indent=2))
        else:
            print(f"REFUSED [{exc.code}]: {exc}", file=sys.stderr)
            for reason in exc.reasons:
                print(f"  - {reason}", file=sys.stderr)
        return EXIT_REFUSED
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


# --------------------------------------------------------------------------- commands


def _keygen(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from tensafe.crypto.kem import HybridKemPrivateKey
        from tensafe.crypto.signing import HybridSigningKey

        prefix = Path(args.out)
        if prefix.parent and not prefix.parent.exists():
            raise UsageError(f"directory {prefix.parent} does not exist")
        sk, kk = HybridSigningKey.generate(), HybridKemPrivateKey.generate()
        items = [
            (Path(f"{prefix}.sign.key"), sk.to_bytes(), True),
            (Path(f"{prefix}.sign.pub"), sk.public_key().to_bytes(), False),
            (Path(f"{prefix}.kem.key"), kk.to_bytes(), True),
            (Path(f"{prefix}.kem.pub"), kk.public_key().to_bytes(), False),
        ]
        if not args.force:
            for path, _, _ in items:  # check all before writing any
                if path.exists():
                    raise UsageError(f"{path} exists (use --force to overwrite)")
        for path, data, private in items:
            _write_key(path, data, private, args.force)
        print(f"signing key id {sk.key_id}: {prefix}.sign.key (private, 0600), {prefix}.sign.pub")
        print(f"KEM key id     {kk.key_id}: {prefix}.kem.key (private, 0600), {prefix}.kem.pub")
        return EXIT_OK

    return _run(go, args)


def _create(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from .manifest import dp_certificate_from_metrics
        from .package import create_package

        signer = _signing_key(args.signing_key)
        recipients = [_kem_public(p) for p in args.recipient]
        provenance = _json_file(args.provenance)
        cert = _json_file(args.dp_certificate)
        if not isinstance(provenance, dict) or not isinstance(cert, dict):
            raise UsageError("provenance and DP certificate files must hold JSON objects")
        if "type" not in cert and "epsilon_spent" in cert:  # raw DPTrainer.dp_metrics() output
            cert = dp_certificate_from_metrics(cert)
        info = create_package(
            args.out,
            args.adapter,
            provenance=provenance,
            dp_certificate=cert,
            signer=signer,
            recipients=recipients,
        )
        if args.json:
            print(json.dumps({
                "ok": True, "path": str(info.path), "package_id": info.package_id, "size": info.size,
                "signer_key_id": info.signer_key_id, "recipients": list(info.recipients), "subjects": info.subjects,
            }, indent=2))  # fmt: skip
        else:
            print(f"wrote {info.path} ({info.size} bytes), package {info.package_id}")
            print(f"signed by {info.signer_key_id}; recipients: {', '.join(info.recipients)}")
        return EXIT_OK

    return _run(go, args)


def _inspect(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from .package import inspect_package

        try:
            info = inspect_package(args.package)
        except OSError as exc:
            raise UsageError(f"cannot read {args.package}: {exc}") from None
        if args.json:
            print(json.dumps(info, indent=2, sort_keys=True))
            return EXIT_OK
        prov = info.get("provenance") or {}
        cert = info.get("dp_certificate") or {}
        base = prov.get("base_model") or {}
        ledger = prov.get("ledger") or {}
        print(f"package     {info['package_id']}  ({info['format']}, created {info['created_at']})")
        print("signature   NOT verified by inspect; signer key id(s): " + ", ".join(info["signer_key_ids"]))
        print(f"base model  {base.get('ref')}  weights sha256 {base.get('weights_sha256')}")
        print(f"tenant      {prov.get('tenant_id')}  client {prov.get('training_client_id')}")
        cp = ledger.get("checkpoint")
        cp_txt = f"checkpoint size {cp['size']} by {cp['key_id']}" if cp else "no checkpoint"
        print(f"ledger      {ledger.get('ledger_id')}/{ledger.get('partition')}: {cp_txt}, "
              f"{len(ledger.get('inclusion_proofs') or [])} inclusion proof(s)")  # fmt: skip
        if cert:
            size = cert.get("dataset_size", cert.get("declared_dataset_size"))
            print(f"DP          epsilon {cert.get('epsilon')} at delta {cert.get('delta')} "
                  f"({cert.get('accountant')}, {cert.get('steps')} steps, sigma {cert.get('noise_multiplier')}, "
                  f"q {cert.get('sample_rate')}, C {cert.get('max_grad_norm')})")  # fmt: skip
            print(f"guarantee   {cert.get('guarantee')} (sampling {cert.get('sampling_mode')}, N = {size})"
                  + ("  TEST MODE: NOT PRIVATE" if cert.get("test_mode") else ""))  # fmt: skip
        print("recipients  " + ", ".join(info["recipients"]))
        for m in info["members"]:
            print(f"  {m['name']:<20} {m['size']:>10} B  sha256 {m['sha256']}")
        return EXIT_OK

    return _run(go, args)


def _verify(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from .package import verify_package

        policy = _policy(args)
        try:
            v = verify_package(args.package, policy=policy, **_trust_args(args))
        except OSError as exc:
            raise UsageError(f"cannot read {args.package}: {exc}") from None
        summary = {
            "ok": True,
            "package_id": v.package_id,
            "signer_key_id": v.signer_key_id,
            "base_model": v.base_model,
            "epsilon": v.dp_certificate["epsilon"],
            "delta": v.dp_certificate["delta"],
            "guarantee": v.dp_certificate["guarantee"],
            "checkpoint": None
            if v.checkpoint is None
            else {"size": v.checkpoint.size, "key_id": v.checkpoint.key_id},
            "inclusion_proofs": len(v.inclusion_proofs),
            "policy": None if v.policy_decision is None else "allow",
        }
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"OK {v.package_id}: signed by {v.signer_key_id}, {len(v.inclusion_proofs)} inclusion proof(s) "
                  f"verified, epsilon {summary['epsilon']} ({summary['guarantee']}), "
                  f"policy {'allow' if policy else 'not evaluated'}")  # fmt: skip
        return EXIT_OK

    return _run(go, args)


def _unpack(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from .package import unpack_package

        key = _kem_private(args.key)
        policy = _policy(args)
        trust = _trust_args(args)
        try:
            u = unpack_package(args.package, key, args.out, trust.pop("trusted_signers"), policy, **trust)
        except (FileExistsError, IsADirectoryError) as exc:
            raise UsageError(f"{exc.filename} exists: unpack into an empty directory") from None
        except OSError as exc:
            raise UsageError(f"{exc.filename or args.package}: {exc.strerror or exc}") from None
        if args.json:
            print(json.dumps({"ok": True, "package_id": u.verified.package_id,
                              "files": {k: str(p) for k, p in u.files.items()}}, indent=2))  # fmt: skip
        else:
            print(f"OK {u.verified.package_id}: adapter written to {u.adapter_dir}")
        return EXIT_OK

    return _run(go, args)
