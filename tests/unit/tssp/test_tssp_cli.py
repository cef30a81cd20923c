"""`tensafe package keygen | create | inspect | verify | unpack`: exit codes 0 / 1 / 2."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from tensafe.tssp.cli import add_commands
from tssp_helpers import Keys, TinyModel, make_provenance


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tensafe")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _write_json(path: Path, obj: Any) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_cli_end_to_end(
    tmp_path: Path,
    tiny_model: TinyModel,
    keys: Keys,
    certificate: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    svc, alice, bob = tmp_path / "svc", tmp_path / "alice", tmp_path / "bob"
    for prefix in (svc, alice, bob):
        assert _main(["package", "keygen", "--out", str(prefix)]) == 0
    for suffix in ("sign.key", "kem.key"):
        assert stat.S_IMODE((tmp_path / f"svc.{suffix}").stat().st_mode) == 0o600
    assert _main(["package", "keygen", "--out", str(svc)]) == 2  # never overwrite silently

    # The ledger checkpoint in the provenance is signed by the test ledger key: trust it too.
    ledger_pub = tmp_path / "ledger.pub"
    ledger_pub.write_bytes(keys.ledger.public_key().to_bytes())
    prov = _write_json(tmp_path / "prov.json", _plain(make_provenance(tiny_model, keys)))
    cert = _write_json(tmp_path / "cert.json", certificate)
    metrics = _write_json(tmp_path / "metrics.json", tiny_model.dp_metrics)
    pkg = tmp_path / "a.tssp"
    create = ["package", "create", "--adapter", str(tiny_model.adapter_dir), "--out", str(pkg),
              "--signing-key", f"{svc}.sign.key", "--recipient", f"{alice}.kem.pub", "--provenance", prov]  # fmt: skip
    assert _main([*create, "--dp-certificate", cert]) == 0
    assert _main([*create, "--dp-certificate", metrics, "--json"]) == 0  # raw dp_metrics() accepted too
    capsys.readouterr()

    assert _main(["package", "inspect", str(pkg)]) == 0
    out = capsys.readouterr().out
    assert "NOT verified" in out and "exact_poisson" in out and "TEST MODE" in out
    assert _main(["package", "inspect", str(pkg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signature_verified"] is False

    trust = ["--trusted", f"{svc}.sign.pub", "--checkpoint-signer", str(ledger_pub)]
    assert _main(["package", "verify", str(pkg), *trust, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    # Refusals exit 1 with the code.
    assert _main(["package", "verify", str(pkg), "--trusted", f"{bob}.sign.pub"]) == 1
    assert "untrusted_signer" in capsys.readouterr().err
    assert _main(["package", "verify", str(pkg), *trust, "--default-policy"]) == 1
    assert "policy_violation" in capsys.readouterr().err
    assert _main(["package", "verify", str(pkg), *trust, "--revoked", keys_id(f"{svc}.sign.pub")]) == 1
    policy = _write_json(tmp_path / "policy.json", {"allow_test_mode": True, "max_epsilon": 0.001})
    assert _main(["package", "verify", str(pkg), *trust, "--policy-json", policy, "--json"]) == 1
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["code"] == "policy_violation" and err["rules"] == ["max_epsilon"]
    rego = tmp_path / "p.rego"
    rego.write_text('package tensafe.tssp\n\nallow if input.tenant_id == "tenant-a"\n')
    assert _main(["package", "verify", str(pkg), *trust, "--policy", str(rego)]) == 0

    # Unpack: right recipient ok, wrong one refused, usage errors are 2.
    out_dir = tmp_path / "unpacked"
    assert (
        _main(["package", "unpack", str(pkg), "--key", f"{alice}.kem.key", "--out", str(out_dir), *trust])
        == 0
    )
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out_dir / name).read_bytes() == (tiny_model.adapter_dir / name).read_bytes()
    assert (
        _main(["package", "unpack", str(pkg), "--key", f"{alice}.kem.key", "--out", str(out_dir), *trust])
        == 2
    )
    bob_out = tmp_path / "bob-out"
    assert (
        _main(["package", "unpack", str(pkg), "--key", f"{bob}.kem.key", "--out", str(bob_out), *trust]) == 1
    )
    assert "wrong_recipient" in capsys.readouterr().err
    assert (
        _main(["package", "unpack", str(pkg), "--key", f"{alice}.kem.pub", "--out", str(bob_out), *trust])
        == 2
    )
    assert _main(["package", "verify", str(tmp_path / "missing.tssp"), *trust]) == 2
    assert _main(["package", "verify", str(pkg), "--trusted", f"{alice}.kem.pub"]) == 2  # wrong key kind

    # A damaged package is refused with exit 1.
    broken = tmp_path / "broken.tssp"
    data = bytearray(pkg.read_bytes())
    data[-100] ^= 1
    broken.write_bytes(bytes(data))
    assert _main(["package", "verify", str(broken), *trust]) == 1
    assert _main(["package", "inspect", str(broken)]) == 1


def keys_id(pub_path: str) -> str:
    from tensafe.crypto.signing import HybridPublicKey

    return HybridPublicKey.from_bytes(Path(pub_path).read_bytes()).key_id


def _plain(prov: dict[str, Any]) -> dict[str, Any]:
    ledger = dict(prov["ledger"])
    ledger["checkpoint"] = ledger["checkpoint"].to_dict() if ledger["checkpoint"] else None
    ledger["inclusion_proofs"] = [p.to_dict() for p in ledger["inclusion_proofs"]]
    return prov | {"ledger": ledger}


def test_sdk_cli_registers_package_commands() -> None:
    # sdk/cli.py imports tensafe.tssp.cli lazily and calls add_commands(sub).
    parser = argparse.ArgumentParser(prog="tensafe")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(["package", "inspect", "x.tssp"])
    assert callable(args.func)
