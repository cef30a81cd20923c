"""Packages end to end: build from a real DP-trained PEFT adapter, verify, unpack, and every
refusal with its precise code (signers, recipients, members, ledger evidence, bindings)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from tensafe.crypto.kem import unwrap_key, wrap_key
from tensafe.tssp import (
    PackageError,
    create_package,
    inspect_package,
    unpack_package,
    verify_package,
)
from tensafe.tssp.manifest import DP_CERTIFICATE_TYPE, MANIFEST_NAME, RECIPIENTS_NAME, WEIGHTS_NAME
from tensafe.tssp.package import _key_wrap_aad
from tssp_helpers import (
    BASE_REF,
    LEDGER_ID,
    PARTITION,
    Keys,
    TinyModel,
    assemble,
    make_evidence,
    make_provenance,
    members_of,
    resign,
    statement_of,
)


def _code(fn, *args: Any, **kw: Any) -> PackageError:
    with pytest.raises(PackageError) as ei:
        fn(*args, **kw)
    return ei.value


# --------------------------------------------------------------------------- happy path


def test_verify_and_unpack_round_trip_is_byte_identical(
    package_path: Path, keys: Keys, tiny_model: TinyModel, test_policy, out_dir: Path
) -> None:
    v = verify_package(package_path, keys.trusted, test_policy)
    assert v.signer_key_id == keys.signer.key_id
    assert v.package_id.startswith("tssp_")
    assert v.base_model == {
        "ref": BASE_REF,
        "weights_sha256": make_provenance(tiny_model, keys)["base_model"]["weights_sha256"],
    }
    assert v.dp_certificate["type"] == DP_CERTIFICATE_TYPE
    assert v.dp_certificate["guarantee"] == "exact_poisson"  # the trainer's Poisson route
    assert v.dp_certificate["epsilon"] == pytest.approx(tiny_model.dp_metrics["epsilon_spent"])
    assert v.checkpoint is not None and v.checkpoint.key_id == keys.ledger.key_id
    assert [p.index for p in v.inclusion_proofs] == [0, 5, 12]
    assert set(v.recipients) == {keys.alice.key_id, keys.bob.key_id}
    assert v.policy_decision is not None and v.policy_decision.allow

    for who in (keys.alice, keys.bob):
        u = unpack_package(package_path, who, out_dir / who.key_id, keys.trusted, test_policy)
        for name, path in u.files.items():
            assert path.read_bytes() == (tiny_model.adapter_dir / name).read_bytes()
            assert path.stat().st_mode & 0o777 == 0o600


def test_unpacked_adapter_gives_identical_logits(
    package_path: Path, keys: Keys, tiny_model: TinyModel, out_dir: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    u = unpack_package(package_path, keys.alice, out_dir, keys.trusted)
    ids = torch.tensor([[1, 17, 42, 99, 7, 3]])

    def logits(adapter: Path | None) -> torch.Tensor:
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model.base_dir), local_files_only=True)
        model = PeftModel.from_pretrained(base, str(adapter)) if adapter else base
        with torch.no_grad():
            return model.eval()(ids).logits

    original, unpacked, plain = logits(tiny_model.adapter_dir), logits(u.adapter_dir), logits(None)
    assert torch.equal(original, unpacked)
    assert not torch.allclose(original, plain)  # the trained adapter actually changes the model


def test_unpack_never_overwrites(package_path: Path, keys: Keys, out_dir: Path) -> None:
    unpack_package(package_path, keys.alice, out_dir, keys.trusted)
    with pytest.raises(FileExistsError):
        unpack_package(package_path, keys.alice, out_dir, keys.trusted)


def test_inspect_needs_no_keys(package_path: Path, keys: Keys) -> None:
    info = inspect_package(package_path)
    assert info["signature_verified"] is False
    assert info["signer_key_ids"] == [keys.signer.key_id]
    assert info["payload_type"] == "application/vnd.in-toto+json"
    assert info["predicate_type"] == "https://tensafe.dev/provenance/v1"
    assert [m["name"] for m in info["members"]] == [MANIFEST_NAME, RECIPIENTS_NAME, WEIGHTS_NAME]
    assert all(s["matches"] for s in info["subjects"])
    assert info["recipients"] == sorted([keys.alice.key_id, keys.bob.key_id])
    assert info["provenance"]["ledger"]["checkpoint"]["size"] == 13
    assert info["dp_certificate"]["sampling_mode"] == "poisson"
    json.dumps(info)  # JSON-serialisable for the CLI


def test_statement_is_in_toto_v1_with_every_member_as_subject(
    package_bytes: bytes, tiny_model: TinyModel
) -> None:
    st = statement_of(package_bytes)
    members = members_of(package_bytes)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert {s["name"]: s["digest"]["sha256"] for s in st["subject"]} == {
        n: hashlib.sha256(members[n]).hexdigest() for n in (RECIPIENTS_NAME, WEIGHTS_NAME)
    }
    assert set(st["predicate"]) == {"package", "provenance", "dp_certificate"}
    # No plaintext weight digest anywhere in the clear manifest.
    weights_sha = hashlib.sha256(
        (tiny_model.adapter_dir / "adapter_model.safetensors").read_bytes()
    ).hexdigest()
    assert weights_sha not in json.dumps(st)


def test_package_without_ledger_evidence(
    tmp_path: Path, tiny_model: TinyModel, keys: Keys, certificate
) -> None:
    out = tmp_path / "p.tssp"
    create_package(
        out, tiny_model.adapter_dir, provenance=make_provenance(tiny_model, keys, with_evidence=False),
        dp_certificate=certificate, signer=keys.signer, recipients=[keys.alice.public_key()],
    )  # fmt: skip
    v = verify_package(out, keys.trusted)
    assert v.checkpoint is None and v.inclusion_proofs == ()
    assert v.policy_input["ledger"] == {
        "ledger_id": LEDGER_ID, "partition": PARTITION, "has_checkpoint": False, "inclusion_proofs": 0,
    }  # fmt: skip


# --------------------------------------------------------------------------- signers


def test_unknown_signer_is_untrusted(package_bytes: bytes, keys: Keys) -> None:
    other = keys.other_signer.public_key()
    e = _code(verify_package, package_bytes, {other.key_id: other})
    assert e.code == "untrusted_signer" and e.key_id == keys.signer.key_id
    assert _code(verify_package, package_bytes, {}).code == "untrusted_signer"


def test_stale_and_revoked_signers_are_untrusted(package_bytes: bytes, keys: Keys) -> None:
    # Rotation: the trust store now holds only the new package key (and the ledger key).
    rotated = {k.key_id: k.public_key() for k in (keys.other_signer, keys.ledger)}
    e = _code(verify_package, package_bytes, rotated)
    assert e.code == "untrusted_signer"
    # Revocation list wins over a trust store that still has the key.
    e = _code(verify_package, package_bytes, keys.trusted, revoked=[keys.signer.key_id])
    assert e.code == "untrusted_signer" and "revoked" in str(e)


def test_misconfigured_trust_map_is_a_usage_error(package_bytes: bytes, keys: Keys) -> None:
    with pytest.raises(ValueError):
        verify_package(package_bytes, {keys.ledger.key_id: keys.signer.public_key()})


def test_resigned_by_untrusted_key(package_bytes: bytes, keys: Keys) -> None:
    forged = resign(package_bytes, keys.other_signer)
    assert _code(verify_package, forged, keys.trusted).code == "untrusted_signer"


def test_signature_spliced_onto_other_key_id(package_bytes: bytes, keys: Keys) -> None:
    # Claim the trusted ledger key signed it: the keyid is trusted, the signature is not its.
    m = members_of(package_bytes)
    env = json.loads(m[MANIFEST_NAME])
    env["signatures"][0]["keyid"] = keys.ledger.key_id
    m[MANIFEST_NAME] = json.dumps(env, separators=(",", ":"), sort_keys=True).encode()
    assert _code(verify_package, assemble(m), keys.trusted).code == "bad_signature"


def test_untrusted_checkpoint_signer(package_bytes: bytes, keys: Keys) -> None:
    only_pkg = {keys.signer.key_id: keys.signer.public_key()}
    e = _code(verify_package, package_bytes, only_pkg)
    assert e.code == "untrusted_signer" and e.key_id == keys.ledger.key_id
    # With a separate checkpoint trust root it verifies.
    verify_package(package_bytes, only_pkg, checkpoint_signers=[keys.ledger.public_key()])


# --------------------------------------------------------------------------- recipients


def test_wrong_recipient(package_path: Path, keys: Keys, out_dir: Path) -> None:
    e = _code(unpack_package, package_path, keys.mallory, out_dir, keys.trusted)
    assert e.code == "wrong_recipient" and e.key_id == keys.mallory.key_id
    assert not out_dir.exists()


def test_wrapped_key_is_bound_to_the_package_id(package_bytes: bytes, keys: Keys, out_dir: Path) -> None:
    # A trusted signer re-labels the package id: the wrapped keys no longer unwrap.
    new_id = "tssp_" + "ab" * 16

    def relabel_members(m: dict[str, bytes]) -> None:
        r = json.loads(m[RECIPIENTS_NAME])
        r["package_id"] = new_id
        m[RECIPIENTS_NAME] = json.dumps(r, separators=(",", ":"), sort_keys=True).encode()

    def relabel(st: dict) -> None:
        st["predicate"]["package"]["id"] = new_id

    forged = resign(package_bytes, keys.signer, members=relabel_members, statement=relabel)
    verify_package(forged, keys.trusted)  # well-formed and signed...
    e = _code(unpack_package, forged, keys.alice, out_dir, keys.trusted)
    assert e.code == "key_unwrap_failed"  # ...but the key wrap is bound to the old id


def test_weights_are_bound_to_the_package_id(package_bytes: bytes, keys: Keys, out_dir: Path) -> None:
    # Even re-wrapping the right key for the new id does not help: the AEAD binds the id too.
    old_id = statement_of(package_bytes)["predicate"]["package"]["id"]
    new_id = "tssp_" + "cd" * 16
    blob = base64.b64decode(
        json.loads(members_of(package_bytes)[RECIPIENTS_NAME])["recipients"][keys.alice.key_id]
    )
    package_key = unwrap_key(keys.alice, blob, _key_wrap_aad(old_id))

    def rewrap(m: dict[str, bytes]) -> None:
        wrapped = base64.b64encode(
            wrap_key(keys.alice.public_key(), package_key, _key_wrap_aad(new_id))
        ).decode()
        r = {
            "format": "tensafe.tssp.recipients/v1",
            "package_id": new_id,
            "recipients": {keys.alice.key_id: wrapped},
        }
        m[RECIPIENTS_NAME] = json.dumps(r, separators=(",", ":"), sort_keys=True).encode()

    def relabel(st: dict) -> None:
        st["predicate"]["package"]["id"] = new_id

    forged = resign(package_bytes, keys.signer, members=rewrap, statement=relabel)
    assert _code(unpack_package, forged, keys.alice, out_dir, keys.trusted).code == "decryption_failed"


def test_recipients_file_of_another_package(
    package_bytes: bytes, keys: Keys, tmp_path: Path, tiny_model, certificate
) -> None:
    other = tmp_path / "o.tssp"
    create_package(
        other, tiny_model.adapter_dir, provenance=make_provenance(tiny_model, keys), dp_certificate=certificate,
        signer=keys.signer, recipients=[keys.alice.public_key()],
    )  # fmt: skip
    theirs = members_of(other.read_bytes())

    def swap(m: dict[str, bytes]) -> None:
        m[RECIPIENTS_NAME] = theirs[RECIPIENTS_NAME]

    # Unsigned swap: digest. Signed (by a trusted but faulty signer): bound to the other id.
    m = members_of(package_bytes)
    swap(m)
    e = _code(verify_package, assemble(m), keys.trusted)
    assert (e.code, e.file) == ("digest_mismatch", RECIPIENTS_NAME)
    e = _code(verify_package, resign(package_bytes, keys.signer, members=swap), keys.trusted)
    assert e.code == "bad_recipients"
    # Whole members from another package: the weights digest no longer matches.
    m = members_of(package_bytes)
    m[WEIGHTS_NAME] = theirs[WEIGHTS_NAME]
    e = _code(verify_package, assemble(m), keys.trusted)
    assert (e.code, e.file) == ("digest_mismatch", WEIGHTS_NAME)


def test_recipient_entry_filed_under_another_key(package_bytes: bytes, keys: Keys) -> None:
    def refile(m: dict[str, bytes]) -> None:
        r = json.loads(m[RECIPIENTS_NAME])
        r["recipients"][keys.mallory.key_id] = r["recipients"].pop(keys.alice.key_id)
        m[RECIPIENTS_NAME] = json.dumps(r, separators=(",", ":"), sort_keys=True).encode()

    assert (
        _code(verify_package, resign(package_bytes, keys.signer, members=refile), keys.trusted).code
        == "bad_recipients"
    )


# --------------------------------------------------------------------------- members


def test_extra_missing_and_reordered_members(package_bytes: bytes, keys: Keys) -> None:
    m = members_of(package_bytes)
    e = _code(verify_package, assemble({**m, "notes.txt": b"hello"}), keys.trusted)
    assert (e.code, e.file) == ("extra_file", "notes.txt")
    e = _code(verify_package, assemble({**m, "a-first.bin": b"x"}), keys.trusted)
    assert (e.code, e.file) == ("extra_file", "a-first.bin")
    for name in (RECIPIENTS_NAME, WEIGHTS_NAME):
        e = _code(verify_package, assemble({k: v for k, v in m.items() if k != name}), keys.trusted)
        assert (e.code, e.file) == ("missing_file", name)
    e = _code(verify_package, assemble({k: v for k, v in m.items() if k != MANIFEST_NAME}), keys.trusted)
    assert (e.code, e.file) == ("missing_file", MANIFEST_NAME)
    order = [RECIPIENTS_NAME, MANIFEST_NAME, WEIGHTS_NAME]
    assert _code(verify_package, assemble(m, order), keys.trusted).code == "bad_container"
    order = [MANIFEST_NAME, WEIGHTS_NAME, RECIPIENTS_NAME]
    assert _code(verify_package, assemble(m, order), keys.trusted).code == "bad_container"


def test_signed_but_malformed_predicate(package_bytes: bytes, keys: Keys) -> None:
    def edits():
        yield lambda st: st["predicate"]["dp_certificate"].update(
            guarantee="exact_poisson", sampling_mode="client_batches"
        )
        yield lambda st: st["predicate"]["dp_certificate"].update(epsilon=-1.0)
        yield lambda st: st["predicate"]["dp_certificate"].pop("delta")
        yield lambda st: st["predicate"]["dp_certificate"].update(sneaky=True)
        yield lambda st: st["predicate"]["package"]["encryption"].update(weights="aes-128-ctr")
        yield lambda st: st["predicate"]["provenance"]["base_model"].update(weights_sha256="XYZ")
        yield lambda st: st.update(predicateType="https://example.com/other")
        yield lambda st: st["subject"].append({"name": "x", "digest": {"sha256": "0" * 64}})

    for edit in edits():
        forged = resign(package_bytes, keys.signer, statement=edit)
        assert _code(verify_package, forged, keys.trusted).code == "bad_manifest"


# --------------------------------------------------------------------------- ledger evidence


def _proofs(st: dict) -> list[dict]:
    return st["predicate"]["provenance"]["ledger"]["inclusion_proofs"]


def test_tampered_inclusion_proof_is_bad_proof(package_bytes: bytes, keys: Keys) -> None:
    def flip_path(st: dict) -> None:
        p = _proofs(st)[1]["path"]
        p[0] = ("0" if p[0][0] != "0" else "1") + p[0][1:]

    def flip_leaf(st: dict) -> None:
        leaf = _proofs(st)[0]["leaf_hash"]
        _proofs(st)[0]["leaf_hash"] = ("0" if leaf[0] != "0" else "1") + leaf[1:]

    def drop_path_element(st: dict) -> None:
        _proofs(st)[2]["path"].pop()

    def other_checkpoint(st: dict) -> None:
        signed, proofs = make_evidence(keys.ledger, n_events=20, proven=(3,))
        _proofs(st).append(proofs[0].to_dict())

    for edit in (flip_path, flip_leaf, drop_path_element, other_checkpoint):
        forged = resign(package_bytes, keys.signer, statement=edit)
        e = _code(verify_package, forged, keys.trusted)
        assert e.code == "bad_proof", (edit.__name__, e)

    # Unsigned tampering with a proof breaks the manifest signature first.
    m = members_of(package_bytes)
    env = json.loads(m[MANIFEST_NAME])
    st = json.loads(base64.b64decode(env["payload"]))
    flip_path(st)
    env["payload"] = base64.b64encode(json.dumps(st, separators=(",", ":"), sort_keys=True).encode()).decode()
    m[MANIFEST_NAME] = json.dumps(env, separators=(",", ":"), sort_keys=True).encode()
    assert _code(verify_package, assemble(m), keys.trusted).code == "bad_signature"


def test_bad_checkpoint_signature_and_origin(package_bytes: bytes, keys: Keys) -> None:
    def forge_sig(st: dict) -> None:
        ledger = st["predicate"]["provenance"]["ledger"]
        raw = bytearray(base64.b64decode(ledger["checkpoint"]["signature"]))
        raw[10] ^= 1
        sig = base64.b64encode(bytes(raw)).decode()
        for cp in [ledger["checkpoint"]] + [p["checkpoint"] for p in ledger["inclusion_proofs"]]:
            cp["signature"] = sig

    def other_ledger(st: dict) -> None:
        st["predicate"]["provenance"]["ledger"]["ledger_id"] = "another-ledger"

    assert (
        _code(verify_package, resign(package_bytes, keys.signer, statement=forge_sig), keys.trusted).code
        == "bad_checkpoint"
    )
    assert (
        _code(verify_package, resign(package_bytes, keys.signer, statement=other_ledger), keys.trusted).code
        == "bad_checkpoint"
    )


# --------------------------------------------------------------------------- create-time validation


def test_create_refuses_bad_inputs(tmp_path: Path, tiny_model: TinyModel, keys: Keys, certificate) -> None:
    prov = make_provenance(tiny_model, keys)
    ok = {
        "provenance": prov,
        "dp_certificate": certificate,
        "signer": keys.signer,
        "recipients": [keys.alice.public_key()],
    }
    out = tmp_path / "x.tssp"
    with pytest.raises(ValueError, match="recipients"):
        create_package(out, tiny_model.adapter_dir, **(ok | {"recipients": []}))
    with pytest.raises(ValueError, match="dp_certificate"):
        create_package(
            out, tiny_model.adapter_dir, **(ok | {"dp_certificate": {**certificate, "epsilon": float("nan")}})
        )
    bad_cert = {**certificate, "guarantee": "exact_poisson", "sampling_mode": "client_batches"}
    with pytest.raises(ValueError, match="dp_certificate"):
        create_package(out, tiny_model.adapter_dir, **(ok | {"dp_certificate": bad_cert}))
    signed, proofs = make_evidence(keys.ledger)
    broken = proofs[0].to_dict() | {"index": 1}
    bad_prov = prov | {"ledger": prov["ledger"] | {"inclusion_proofs": [broken]}}
    with pytest.raises(ValueError, match="proof"):
        create_package(out, tiny_model.adapter_dir, **(ok | {"provenance": bad_prov}))
    with pytest.raises(ValueError, match="origin"):
        create_package(
            out,
            tiny_model.adapter_dir,
            **(ok | {"provenance": prov | {"ledger": prov["ledger"] | {"partition": 0}}}),
        )
    with pytest.raises(FileNotFoundError):
        create_package(out, tmp_path, **ok)
    assert not out.exists()


def test_proofs_from_the_audit_cli_path_verify(
    tmp_path: Path, tiny_model: TinyModel, keys: Keys, certificate
) -> None:
    """Evidence made exactly as `tensafe audit prove` makes it: real envelopes, a real
    checkpoint record, tensafe.events.audit.prove_event."""
    from tensafe.events.audit import prove_event
    from tensafe.events.chain import CLAIM_TYPE, ChainState
    from tensafe.events.checkpoints import make_checkpoint
    from tensafe.events.envelope import decode_envelope, make_envelope
    from tensafe.events.export import LedgerSnapshot
    from tensafe.events.merkle import MerkleTree

    state, raws, tree = ChainState(PARTITION), [], MerkleTree()

    def feed(event_type: str, payload: dict, tenant: str, client: str, cmd: str | None) -> None:
        raw = make_envelope(
            prev_hash=state.tail_hash, partition=PARTITION, seq=state.next_seq, epoch=1, event_type=event_type,
            payload=payload, tenant_id=tenant, client_id=client, command_id=cmd,
        ).encode()  # fmt: skip
        state.feed(raw)
        raws.append(raw)
        tree.append(state.tail_hash)

    feed(CLAIM_TYPE, {"writer_id": "w", "epoch": 1, "host": "h", "pid": 1}, "", "", None)
    for i in range(9):
        feed(
            "CommandFailed",
            {"command_type": "x", "error_code": "e", "message": f"m{i}"},
            "tenant-a",
            "tc_0123",
            f"c{i}",
        )
    cp = make_checkpoint(keys.ledger, LEDGER_ID, PARTITION, tree.size, tree.root(), state.tail_hash)
    snap = LedgerSnapshot(ledger={PARTITION: list(enumerate(raws))}, checkpoints=[cp])
    proofs = [prove_event(snap, decode_envelope(raws[i]).event_id) for i in (1, 5, 9)]

    prov = make_provenance(tiny_model, keys)
    prov["ledger"] = {"ledger_id": LEDGER_ID, "partition": PARTITION, "checkpoint": proofs[0].checkpoint,
                      "inclusion_proofs": proofs}  # fmt: skip
    out = tmp_path / "audit.tssp"
    create_package(out, tiny_model.adapter_dir, provenance=prov, dp_certificate=certificate, signer=keys.signer,
                   recipients=[keys.alice.public_key()])  # fmt: skip
    v = verify_package(out, keys.trusted)
    assert [p.index for p in v.inclusion_proofs] == [1, 5, 9]
    assert v.checkpoint.size == 10 and v.checkpoint.head_hash == state.tail_hash
