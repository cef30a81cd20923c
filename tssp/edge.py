"""EdgeLoader: verify a package, check the policy, decrypt, load onto the right base, sample.

    loader = EdgeLoader({pub.key_id: pub}, Policy.from_dict({...}), recipient_private_key)
    model, tokenizer = loader.load("adapter.tssp", "tensafe-tiny-llama")   # or a model dir
    print(loader.sample("In the beginning", max_tokens=32))

The order is the point: nothing is decrypted before the signature, the ledger evidence
and the policy pass, and nothing is loaded onto a base model whose weights digest
differs from the one the adapter was trained on. The decrypted adapter touches disk
only inside a private (0700) temporary directory that is removed right after
``PeftModel.from_pretrained`` has read it. torch/transformers/peft are imported lazily.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensafe.crypto.digest import model_weights_sha256
from tensafe.crypto.kem import HybridKemPrivateKey

from .errors import BaseModelMismatch
from .manifest import ADAPTER_FILES
from .package import PackageSource, TrustedSigners, VerifiedPackage, _decrypt_adapter, verify_package
from .policy import Policy

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensafe.trainer.generation import Completion
    from transformers import PreTrainedTokenizerBase

__all__ = ["EdgeLoader"]


class EdgeLoader:
    """Loads TSSP adapters for inference on an edge device (no keys but the recipient's)."""

    def __init__(
        self,
        trusted_signers: TrustedSigners,
        policy: Policy | None,
        recipient_key: HybridKemPrivateKey,
        *,
        revoked: Collection[str] = (),
        checkpoint_signers: TrustedSigners | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(recipient_key, HybridKemPrivateKey):
            raise TypeError("recipient_key must be a HybridKemPrivateKey")
        self.trusted_signers = trusted_signers
        # An edge loader always evaluates a policy: None means the conservative default.
        self.policy = policy if policy is not None else Policy.default()
        self.recipient_key = recipient_key
        self.revoked = tuple(revoked)
        self.checkpoint_signers = checkpoint_signers
        self.device = device
        self.dtype = dtype
        self.model: Any = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.verified: VerifiedPackage | None = None

    @staticmethod
    def _resolve_base(verified: VerifiedPackage, base: str | os.PathLike[str] | None) -> Path:
        from tensafe.trainer.models import resolve_model_ref

        if base is None:
            return resolve_model_ref(verified.base_model["ref"], allow_paths=False)
        if isinstance(base, os.PathLike) or Path(base).is_dir():
            return Path(base).resolve()
        return resolve_model_ref(str(base), allow_paths=False)

    def load(
        self, path: PackageSource, base_model_ref_or_dir: str | os.PathLike[str] | None = None
    ) -> tuple[Any, PreTrainedTokenizerBase]:
        """Verify + policy, decrypt, check the base weights digest, load base + adapter.

        ``base_model_ref_or_dir``: a model directory or a model name (resolved locally as
        ``tensafe.trainer.models.resolve_model_ref`` does); None uses the package's base ref.
        Raises PackageError (incl. BaseModelMismatch) on any refusal.
        """
        from peft import PeftModel
        from tensafe.trainer.models import load_base_model

        verified = verify_package(
            path,
            self.trusted_signers,
            self.policy,
            revoked=self.revoked,
            checkpoint_signers=self.checkpoint_signers,
        )
        files = _decrypt_adapter(verified, self.recipient_key)
        base_dir = self._resolve_base(verified, base_model_ref_or_dir)
        expected = verified.base_model["weights_sha256"]
        try:
            actual = model_weights_sha256(base_dir)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise BaseModelMismatch(
                f"cannot hash base model weights: {exc}", code="base_model_mismatch"
            ) from None
        if actual != expected:
            raise BaseModelMismatch(
                f"base model at {base_dir} has weights digest {actual}, but the adapter was trained on "
                f"{verified.base_model['ref']} with digest {expected}",
                code="base_model_mismatch",
            )
        base, tokenizer = load_base_model(str(base_dir), device=self.device, dtype=self.dtype)
        with tempfile.TemporaryDirectory(prefix="tssp-adapter-") as tmp:  # created 0700
            for name in ADAPTER_FILES:
                fd = os.open(Path(tmp) / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(files[name])
            model = PeftModel.from_pretrained(base, tmp, is_trainable=False)
        model.eval()
        self.model, self.tokenizer, self.verified = model, tokenizer, verified
        return model, tokenizer

    def generate(self, prompts: list[str], **kw: Any) -> list[Completion]:
        """``tensafe.trainer.generation.generate`` on the loaded model."""
        from tensafe.trainer.generation import generate

        if self.model is None:
            raise RuntimeError("call load() first")
        return generate(self.model, self.tokenizer, prompts=prompts, **kw)

    def sample(self, prompt: str, **kw: Any) -> str:
        """One completion's text for ``prompt`` (kw: max_tokens, temperature, top_p, top_k, stop, seed)."""
        return self.generate([prompt], **kw)[0].text
