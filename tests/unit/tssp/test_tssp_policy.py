"""The Rego v1 load policy, evaluated with regopy: both outcomes of every rule, the
"anything but an explicit true is a deny" rule, and policy refusals of real packages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from tensafe.tssp import PackageError, Policy, PolicyError, create_package, unpack_package, verify_package
from tensafe.tssp.policy import DEFAULT_POLICY_PATH, rego_json
from tssp_helpers import BASE_REF, Keys, TinyModel, make_provenance

SIGNER = "a" * 32
BASE = {
    "package_id": "tssp_" + "0" * 32,
    "created_at": "2025-01-01T00:00:00Z",
    "signer": {"key_id": SIGNER},
    "base_model": {"ref": "tensafe-tiny-llama", "weights_sha256": "b" * 64},
    "tenant_id": "tenant-a",
    "training_client_id": "tc_1",
    "ledger": {"ledger_id": "l", "partition": 0, "has_checkpoint": True, "checkpoint_key_id": "c" * 32,
               "checkpoint_size": 10, "inclusion_proofs": 2},
    "adapter": {"format": "peft-lora", "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]},
    "dp": {"type": "https://tensafe.dev/dp-certificate/v1", "epsilon": 2.5, "delta": 1e-05, "noise_multiplier": 1.1,
           "sample_rate": 0.01, "steps": 100, "accountant": "rdp", "sampling_mode": "poisson",
           "guarantee": "exact_poisson", "dataset_size": 1000, "accounting_dataset_size": 1000,
           "max_grad_norm": 1.0, "neighboring_relation": "add_or_remove_one", "test_mode": False},
    "recipients": ["d" * 32],
}  # fmt: skip


def _input(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = doc
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return doc


# Rule -> (config, input change that violates it). The unchanged BASE input satisfies all.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "allowed_signers": ({"allowed_signers": [SIGNER]}, {"signer__key_id": "e" * 32}),
    "max_epsilon": ({"max_epsilon": 3.0}, {"dp__epsilon": 3.0000001}),
    "allowed_base_models": ({"allowed_base_models": ["tensafe-tiny-llama"]}, {"base_model__ref": "other"}),
    "allowed_base_model_digests": (
        {"allowed_base_model_digests": ["b" * 64]},
        {"base_model__weights_sha256": "f" * 64},
    ),
    "required_sampling_mode": (
        {"required_sampling_mode": "poisson"},
        {"dp__sampling_mode": "client_batches"},
    ),
    "required_guarantee": (
        {"required_guarantee": "exact_poisson"},
        {"dp__guarantee": "conditional_on_client_sampling"},
    ),
    "max_delta": ({"max_delta": 1e-5}, {"dp__delta": 1.5e-5}),
    "require_delta_below_inverse_n": (
        {"require_delta_below_inverse_n": True},
        {"dp__accounting_dataset_size": 100000},
    ),
    "require_inclusion_proofs": ({"require_inclusion_proofs": True}, {"ledger__inclusion_proofs": 0}),
    "allowed_tenants": ({"allowed_tenants": ["tenant-a"]}, {"tenant_id": "tenant-b"}),
    "max_steps": ({"max_steps": 100}, {"dp__steps": 101}),
    "test_mode": ({}, {"dp__test_mode": True}),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_both_outcomes(rule: str) -> None:
    config, violation = CASES[rule]
    policy = Policy.from_dict(config)
    ok = policy.evaluate(_input())
    assert ok.allow and ok.reasons == () and ok.raw_allow == '{"expressions":[true]}'
    bad = policy.evaluate(_input(**violation))
    assert not bad.allow
    assert bad.rules == (rule,), bad.reasons
    assert bad.reasons[0].startswith(rule + ": ")
    with pytest.raises(PackageError) as ei:
        bad.raise_for_deny()
    assert ei.value.code == "policy_violation" and ei.value.rule == rule


def test_all_rules_at_once_are_all_named() -> None:
    config: dict[str, Any] = {}
    violation: dict[str, Any] = {}
    for cfg, change in CASES.values():
        config |= cfg
        violation |= change
    d = Policy.from_dict(config).evaluate(_input(**violation))
    assert not d.allow and set(d.rules) == set(CASES)


def test_small_floats_reach_rego_in_plain_decimal() -> None:
    # rego-cpp refuses exponents in data documents; 1e-07 must still compare correctly.
    assert (
        rego_json({"x": 1e-07, "y": 1e20, "z": 2.5}) == '{"x":0.0000001,"y":100000000000000000000.0,"z":2.5}'
    )
    policy = Policy.from_dict({"max_delta": 1e-7})
    assert policy.evaluate(_input(dp__delta=9e-8)).allow
    assert policy.evaluate(_input(dp__delta=1.1e-7)).rules == ("max_delta",)


def test_default_policy() -> None:
    d = Policy.default()
    assert d.evaluate(_input()).allow
    assert d.evaluate(_input(dp__epsilon=10.5)).rules == ("max_epsilon",)
    assert d.evaluate(_input(dp__test_mode=True)).rules == ("test_mode",)
    assert "package tensafe.tssp" in DEFAULT_POLICY_PATH.read_text()


def test_anything_but_explicit_true_denies() -> None:
    inp = _input()
    # rego-cpp answers "undefined" for this `default` rule: still a deny.
    assert not Policy("package tensafe.tssp\n\ndefault allow := false\n").evaluate(inp).allow
    for body in ('allow := "true"', "allow := 1", "allow := [true]", "allow := {true}", "x := 1"):
        d = Policy(f"package tensafe.tssp\n\n{body}\n").evaluate(inp)
        assert not d.allow and d.rules == ("allow",), body
    # allow true but a deny reason: the stricter answer wins.
    d = Policy('package tensafe.tssp\n\nallow := true\n\ndeny contains "custom: no"\n').evaluate(inp)
    assert not d.allow and d.rules == ("custom",)
    # Runtime error inside the policy (conflicting values): deny, not crash.
    d = Policy(
        "package tensafe.tssp\n\nallow := true if input.tenant_id\nallow := false if input.package_id\n"
    ).evaluate(inp)
    assert not d.allow
    # A custom policy that allows.
    assert Policy("package tensafe.tssp\n\nallow if input.dp.epsilon < 3\n").evaluate(inp).allow


def test_missing_config_document_denies() -> None:
    source = DEFAULT_POLICY_PATH.read_text()
    assert not Policy({"default.rego": source}, data={}).evaluate(_input()).allow


def test_bad_policies_fail_at_construction() -> None:
    with pytest.raises(PolicyError):
        Policy("package tensafe.tssp\nallow if {")
    with pytest.raises(PolicyError):
        Policy.from_dict({"max_epsilon": "8"})
    with pytest.raises(PolicyError):
        Policy.from_dict({"max_delta": 2})
    with pytest.raises(PolicyError):
        Policy.from_dict({"unknown_rule": 1})
    with pytest.raises(PolicyError):
        Policy.from_dict({"allowed_signers": ["not-hex"]})


# --------------------------------------------------------------------------- on real packages


def _client_batches_package(tmp_path: Path, tiny: TinyModel, keys: Keys, certificate: dict[str, Any]) -> Path:
    cert = {k: v for k, v in certificate.items() if k != "dataset_size"}
    cert |= {
        "sampling_mode": "client_batches",
        "guarantee": "conditional_on_client_sampling",
        "declared_dataset_size": certificate["dataset_size"],
    }
    out = tmp_path / "client.tssp"
    create_package(
        out, tiny.adapter_dir, provenance=make_provenance(tiny, keys), dp_certificate=cert, signer=keys.signer,
        recipients=[keys.alice.public_key()],
    )  # fmt: skip
    return out


def test_policy_violations_on_packages(
    package_path: Path, tmp_path: Path, tiny_model: TinyModel, keys: Keys, certificate: dict[str, Any]
) -> None:
    def refused(path: Path, config: dict[str, Any]) -> PackageError:
        with pytest.raises(PackageError) as ei:
            verify_package(path, keys.trusted, Policy.from_dict({"allow_test_mode": True} | config))
        assert ei.value.code == "policy_violation"
        return ei.value

    eps = verify_package(package_path, keys.trusted).dp_certificate["epsilon"]
    assert refused(package_path, {"max_epsilon": eps / 2}).rules == ("max_epsilon",)
    assert refused(package_path, {"allowed_base_models": ["tensafe-tiny-llama"]}).rules == (
        "allowed_base_models",
    )
    assert refused(package_path, {"allowed_signers": [keys.other_signer.key_id]}).rules == (
        "allowed_signers",
    )
    # The default policy refuses the seeded test-mode run these fixtures make.
    with pytest.raises(PackageError) as ei:
        verify_package(package_path, keys.trusted, Policy.default())
    assert ei.value.rules == ("test_mode",)

    client = _client_batches_package(tmp_path, tiny_model, keys, certificate)
    v = verify_package(client, keys.trusted, Policy.from_dict({"allow_test_mode": True}))
    assert v.dp_certificate["guarantee"] == "conditional_on_client_sampling"
    assert v.policy_input["dp"]["accounting_dataset_size"] == certificate["dataset_size"]
    e = refused(client, {"required_guarantee": "exact_poisson"})
    assert e.rules == ("required_guarantee",) and "conditional_on_client_sampling" in e.reasons[0]
    assert refused(client, {"required_sampling_mode": "poisson"}).rules == ("required_sampling_mode",)

    allowed = Policy.from_dict(
        {"allow_test_mode": True, "max_epsilon": eps * 2, "allowed_base_models": [BASE_REF],
         "required_guarantee": "exact_poisson", "require_inclusion_proofs": True,
         "allowed_signers": [keys.signer.key_id], "require_delta_below_inverse_n": True}
    )  # fmt: skip
    assert verify_package(package_path, keys.trusted, allowed).policy_decision.allow


def test_policy_runs_before_decryption(package_path: Path, keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(PackageError) as ei:
        unpack_package(package_path, keys.alice, out, keys.trusted, Policy.from_dict({"max_epsilon": 0.0}))
    assert ei.value.code == "policy_violation"
    assert not out.exists()


def test_regopy_before_torch_does_not_crash_the_process() -> None:
    # regopy's librego exports its own operator new/delete; loaded first, it used to make the
    # next libtorch_cpu.so load die with "double free or corruption" (see policy._import_regopy).
    import importlib.util
    import subprocess
    import sys

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch not installed")
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib" / "libtorch_cpu.so"
    code = (
        "import ctypes\n"
        "from tensafe.tssp.policy import Policy\n"
        "assert not Policy.default().evaluate({}).allow\n"
        f"ctypes.CDLL({str(lib)!r})\n"
        "print('alive')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and "alive" in out.stdout, out.stderr[-2000:]
