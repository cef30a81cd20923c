"""Load policy: real Rego v1 evaluated in-process with regopy (rego-cpp), no OPA server.

* ``Policy(modules, data)`` — any Rego v1 modules defining ``data.tensafe.tssp.allow``
  and ``data.tensafe.tssp.deny`` (a set of ``"<rule>: <reason>"`` strings).
* ``Policy.from_dict({...})`` — the shipped ``policies/default.rego`` with a validated
  parameter dict compiled to ``data.tensafe.tssp.config`` (docs/TSSP_SPEC.md §7).
* ``Policy.default()`` — ``max_epsilon`` 10, δ < 1/N, test-mode certificates denied.

Decision rule: allow only if the ``allow`` query returns exactly ``true``. rego-cpp
answers *undefined* (not ``false``) for some ``default`` rules, and an evaluation error
is also not ``true``: all of these deny (FINDINGS.md "Policy (OPA / Rego)").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .errors import PolicyViolation

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_POLICY_PATH",
    "Policy",
    "PolicyDecision",
    "PolicyError",
    "build_policy_input",
]

DEFAULT_POLICY_PATH = Path(__file__).resolve().parent / "policies" / "default.rego"
ALLOW_QUERY = "data.tensafe.tssp.allow"
DENY_QUERY = "data.tensafe.tssp.deny"
DEFAULT_CONFIG: dict[str, Any] = {"max_epsilon": 10.0, "require_delta_below_inverse_n": True}

_RULE_RE = re.compile(r"([a-z][a-z0-9_]*): ")

# Parameter name -> (kind, description). Kind drives validation of Policy.from_dict.
CONFIG_KEYS: dict[str, str] = {
    "allowed_signers": "key_ids",
    "max_epsilon": "number",
    "allowed_base_models": "strings",
    "allowed_base_model_digests": "hexes",
    "required_sampling_mode": "sampling_mode",
    "required_guarantee": "guarantee",
    "max_delta": "probability",
    "require_delta_below_inverse_n": "bool",
    "require_inclusion_proofs": "bool",
    "allowed_tenants": "strings",
    "allow_test_mode": "bool",
    "max_steps": "int",
}


def _import_regopy() -> Any:
    """Import regopy without poisoning the C++ runtime for torch.

    rego-cpp's ``librego_shared.so`` exports its own ``operator new/delete`` (snmalloc). If it
    is the first library to pull in ``libstdc++``, libstdc++'s internal allocations bind to
    that allocator, and a later ``import torch`` dies with "double free or corruption"
    (regopy 1.5.2, torch 2.13; torch imported *first* is fine). Loading libstdc++ on its
    own first gives it its own allocator, which is exactly the torch-first situation.
    """
    if "regopy" not in sys.modules and sys.platform.startswith("linux"):
        for name in ("libstdc++.so.6", ctypes.util.find_library("stdc++")):
            if not name:
                continue
            try:
                ctypes.CDLL(name)
                break
            except OSError:
                continue
    import regopy

    return regopy


class PolicyError(ValueError):
    """A policy that cannot be built (bad Rego source or bad parameters)."""


@dataclass(frozen=True)
class PolicyDecision:
    allow: bool
    reasons: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    raw_allow: str = ""
    input: dict[str, Any] = field(default_factory=dict, repr=False)

    def raise_for_deny(self) -> None:
        if self.allow:
            return
        code = "policy_error" if self.rules == ("policy_error",) else "policy_violation"
        raise PolicyViolation(
            "policy refused the package: " + "; ".join(self.reasons),
            code=code,
            rules=self.rules,
            reasons=self.reasons,
        )


# --------------------------------------------------------------------------- JSON for rego-cpp


def _num(x: float) -> str:
    # rego-cpp's data parser refuses exponents ("1e-05"): write plain decimal, exactly the
    # shortest repr's value.
    if not math.isfinite(x):
        raise PolicyError("policy documents cannot hold NaN or infinity")
    text = format(Decimal(repr(float(x))), "f")
    return text if "." in text else text + ".0"


def rego_json(obj: Any) -> str:
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=True)
    if isinstance(obj, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{rego_json(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(rego_json(v) for v in obj) + "]"
    raise PolicyError(f"cannot put {type(obj).__name__} into a policy document")


# --------------------------------------------------------------------------- config validation


def _validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise PolicyError(f"unknown policy keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    for key, value in config.items():
        if value is None:
            continue  # None = unconstrained, same as absent
        kind = CONFIG_KEYS[key]
        if kind in ("strings", "key_ids", "hexes"):
            if (
                isinstance(value, str)
                or not isinstance(value, Sequence)
                or not all(isinstance(v, str) for v in value)
            ):
                raise PolicyError(f"{key} must be a list of strings")
            pattern = {"key_ids": r"[0-9a-f]{32}", "hexes": r"[0-9a-f]{64}"}.get(kind)
            if pattern and not all(re.fullmatch(pattern, v) for v in value):
                raise PolicyError(f"{key} must hold lowercase hex ids ({pattern})")
            out[key] = list(value)
        elif kind in ("number", "probability"):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise PolicyError(f"{key} must be a finite number >= 0")
            if kind == "probability" and not 0 < value < 1:
                raise PolicyError(f"{key} must be in (0, 1)")
            out[key] = float(value)
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PolicyError(f"{key} must be an integer >= 0")
            out[key] = value
        elif kind == "bool":
            if not isinstance(value, bool):
                raise PolicyError(f"{key} must be true or false")
            out[key] = value
        elif kind == "sampling_mode":
            if value not in ("poisson", "client_batches"):
                raise PolicyError(f"{key} must be 'poisson' or 'client_batches'")
            out[key] = value
        elif kind == "guarantee":
            if value not in ("exact_poisson", "conditional_on_client_sampling"):
                raise PolicyError(f"{key} must be 'exact_poisson' or 'conditional_on_client_sampling'")
            out[key] = value
    return out


# --------------------------------------------------------------------------- policy


class Policy:
    """A compiled-on-use Rego policy plus its data document."""

    def __init__(
        self,
        modules: Mapping[str, str] | str,
        data: Mapping[str, Any] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.modules: dict[str, str] = {"policy.rego": modules} if isinstance(modules, str) else dict(modules)
        if not self.modules:
            raise PolicyError("a policy needs at least one Rego module")
        self.data: dict[str, Any] = dict(data or {})
        self.config = dict(config) if config is not None else None
        self._data_json = rego_json(self.data)
        # Compile once now so a broken policy fails when it is configured, not at load time.
        self._interpreter()

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Policy:
        """The shipped default.rego with ``config`` (validated) as ``data.tensafe.tssp.config``."""
        cfg = _validate_config(config)
        return cls(
            {"default.rego": DEFAULT_POLICY_PATH.read_text("utf-8")},
            {"tensafe": {"tssp": {"config": cfg}}},
            config=cfg,
        )

    @classmethod
    def default(cls) -> Policy:
        return cls.from_dict(DEFAULT_CONFIG)

    @classmethod
    def from_files(
        cls, rego_files: Sequence[str | os.PathLike[str]], data: Mapping[str, Any] | None = None
    ) -> Policy:
        return cls({Path(f).name: Path(f).read_text("utf-8") for f in rego_files}, data)

    # -- evaluation -----------------------------------------------------------------------
    def _interpreter(self) -> Any:
        try:
            regopy = _import_regopy()
        except ImportError as exc:  # pragma: no cover - regopy is a server dependency
            raise PolicyError("regopy is not installed (pip install 'tensafe[server]')") from exc
        interp = regopy.Interpreter()
        for name, source in self.modules.items():
            try:
                interp.add_module(name, source)
            except Exception as exc:  # regopy.RegoError: parse/compile errors
                raise PolicyError(f"Rego module {name} does not compile: {exc}") from None
        interp.add_data_json(self._data_json)
        return interp

    def evaluate(self, input_doc: Mapping[str, Any]) -> PolicyDecision:
        """Evaluate; never raises for a deny (see PolicyDecision.raise_for_deny)."""
        doc = dict(input_doc)
        try:
            interp = self._interpreter()
            interp.set_input_term(rego_json(doc))
            # Only str(output) is safe: Output.expressions() aborts the process (C++
            # std::logic_error) on an error result.
            allow_raw = str(interp.query(ALLOW_QUERY))
            deny_raw = str(interp.query(DENY_QUERY))
        except PolicyError as exc:
            return PolicyDecision(False, (f"policy_error: {exc}",), ("policy_error",), "", doc)
        except Exception as exc:  # any rego-cpp failure is a deny, never an accidental allow
            return PolicyDecision(
                False, (f"policy_error: evaluation failed: {exc}",), ("policy_error",), "", doc
            )
        allow = _single_expression(allow_raw) is True
        deny_value = _single_expression(deny_raw)
        reasons: list[str] = []
        if isinstance(deny_value, list):
            reasons = sorted(str(r) for r in deny_value)
        elif deny_raw.strip() not in ("undefined", ""):
            reasons = [f"policy_error: deny query returned {deny_raw[:200]}"]
        if reasons and allow:
            # allow and deny disagree: the stricter answer wins.
            allow = False
        if not allow and not reasons:
            reasons = [f"allow: policy did not return allow == true (got {allow_raw[:200]})"]
        rules = tuple(dict.fromkeys(_rule_of(r) for r in reasons))
        return PolicyDecision(allow, tuple(reasons), rules if not allow else (), allow_raw, doc)

    def check(self, input_doc: Mapping[str, Any]) -> PolicyDecision:
        """Evaluate and raise PolicyViolation unless allowed."""
        decision = self.evaluate(input_doc)
        decision.raise_for_deny()
        return decision

    def __repr__(self) -> str:
        return f"Policy(modules={sorted(self.modules)}, config={self.config!r})"


def _single_expression(raw: str) -> Any:
    """``{"expressions":[X]}`` -> X; anything else (undefined, errors, bindings) -> a sentinel."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return _NOTHING
    if isinstance(obj, dict) and set(obj) == {"expressions"}:
        exprs = obj["expressions"]
        if isinstance(exprs, list) and len(exprs) == 1:
            return exprs[0]
    return _NOTHING


_NOTHING = object()


def _rule_of(reason: str) -> str:
    m = _RULE_RE.match(reason)
    return m.group(1) if m else "policy"


# --------------------------------------------------------------------------- input document


def build_policy_input(
    *,
    signer_key_id: str,
    package: Mapping[str, Any],
    provenance: Mapping[str, Any],
    dp_certificate: Mapping[str, Any],
    recipients: Sequence[str],
    checkpoint_key_id: str | None,
    checkpoint_size: int | None,
    inclusion_proofs: int,
) -> dict[str, Any]:
    """The Rego input document (docs/TSSP_SPEC.md §7), from verified manifest parts only."""
    ledger = provenance["ledger"]
    cfg = provenance["adapter"]["config"]
    ledger_in: dict[str, Any] = {
        "ledger_id": ledger["ledger_id"],
        "partition": ledger["partition"],
        "has_checkpoint": checkpoint_key_id is not None,
        "inclusion_proofs": inclusion_proofs,
    }
    if checkpoint_key_id is not None:
        ledger_in["checkpoint_key_id"] = checkpoint_key_id
        ledger_in["checkpoint_size"] = checkpoint_size
    adapter: dict[str, Any] = {"format": provenance["adapter"]["format"]}
    for key in ("peft_type", "r", "lora_alpha", "target_modules"):
        value = cfg.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            adapter[key] = sorted(value)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            adapter[key] = value
    dp = dict(dp_certificate)
    dp["accounting_dataset_size"] = dp.get("dataset_size", dp.get("declared_dataset_size"))
    return {
        "package_id": package["id"],
        "created_at": package["created_at"],
        "signer": {"key_id": signer_key_id},
        "base_model": dict(provenance["base_model"]),
        "tenant_id": provenance["tenant_id"],
        "training_client_id": provenance["training_client_id"],
        "ledger": ledger_in,
        "adapter": adapter,
        "dp": dp,
        "recipients": sorted(recipients),
    }
