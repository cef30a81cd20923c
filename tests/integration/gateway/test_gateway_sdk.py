"""The TenSafe SDK (sdk/, `tensafe`) against this gateway: the two sides of docs/API.md agree."""

from __future__ import annotations

import httpx
import pytest
from gateway_harness import Env
from tensafe.gateway import create_app

pytestmark = pytest.mark.integration


async def test_sdk_drives_the_gateway(env: Env) -> None:
    from tensafe import DPConfig, LoRAConfig, ServiceClient, TrainingConfig
    from tensafe.errors import NotFoundError

    t, other = env.tenant("mine"), env.tenant("theirs")
    app = create_app(env.settings())
    async with env.trainer(), app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with ServiceClient(
            base_url="http://gw", api_key=t.key, async_transport=transport, max_retries=0
        ) as svc:
            assert [m.model_ref for m in await svc.list_models_async()] == ["tensafe-tiny-llama"]
            config = TrainingConfig(
                model_ref="tensafe-tiny-llama",
                lora_config=LoRAConfig(rank=4, alpha=8),
                dp_config=DPConfig(sampling="client_batches", dataset_size=100, expected_batch_size=2),
                batch_size=2,
            )
            tc = await svc.create_training_client_async(config)
            fut = await tc.forward_backward_async({"input_ids": [[1, 2, 3]] * 2, "labels": [[1, 2, 3]] * 2})
            fb = await fut.result_async()
            assert fb.num_samples == 2 and fb.clip is not None
            step = await (await tc.optim_step_async()).result_async()
            assert step.step == 1
            metrics = await tc.get_dp_metrics_async()
            assert (
                metrics.steps == 1
                and metrics.epsilon_spent == 0.5
                and metrics.guarantee == "conditional_on_client_sampling"
            )
            saved = await tc.save_state_async("ckpt")
            assert saved.artifact_id.startswith("art_") and saved.encryption.algorithm == "AES-256-GCM"
            loaded = await tc.load_state_async(saved.artifact_id, load_optimizer=False)
            assert loaded.loaded_optimizer is False
            sample = await tc.sample_async(prompts=["hello"], max_tokens=4, seed=1)
            assert sample.samples[0].completion == "completion 0"
            logs = await tc.get_audit_logs_async(limit=100)
            assert any("OptimStepApplied" in e.event_type for e in logs.entries)
            ds = await svc.register_dataset_async("texts", ["a", "b"])  # the SDK checks content_hash itself
            assert ds.num_records == 2
            assert tc.client_id in [c.client_id for c in await svc.list_training_clients_async()]
            assert [a.artifact_id for a in await svc.list_artifacts_async(client_id=tc.client_id)] == [
                saved.artifact_id
            ]
        async with ServiceClient(
            base_url="http://gw", api_key=other.key, async_transport=transport, max_retries=0
        ) as theirs:
            with pytest.raises(NotFoundError):
                await theirs.get_artifact_async(saved.artifact_id)
            assert await theirs.list_training_clients_async() == []
