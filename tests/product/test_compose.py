"""docker-compose.yml validated offline: no Docker engine runs on CI machines."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
EXPECTED = {"postgres", "redis", "migrate", "bot", "worker-gpu", "worker-serve", "worker-serve-vllm", "flower", "watch"}
LONG_RUNNING = EXPECTED - {"migrate"}


def env_example_names() -> set[str]:
    """Variables .env.example sets, or documents as a commented `# NAME=default` line."""
    return set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))


def test_every_service_is_declared():
    assert set(SERVICES) == EXPECTED


def test_every_service_has_an_image_or_build():
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name


def test_long_running_services_have_health_checks():
    for name in LONG_RUNNING:
        test = SERVICES[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"


def test_dependencies_wait_for_health_or_completion():
    for name, service in SERVICES.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            wanted = "service_completed_successfully" if dep == "migrate" else "service_healthy"
            assert spec["condition"] == wanted, f"{name} -> {dep}"
            if wanted == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{dep} is waited on but has no health check"


def test_app_services_share_the_artifact_volume_and_migrate_first():
    for name in ("bot", "worker-gpu", "worker-serve"):
        assert "artifacts:/data" in SERVICES[name]["volumes"], name
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["migrate"]["command"] == ["portllm", "db", "upgrade"]
    sources = {v.rsplit(":", 2)[0] if v.count(":") > 1 else v.split(":", 1)[0]
               for s in SERVICES.values() for v in s.get("volumes", [])}
    named = {v for v in sources if not v.startswith(("/", ".", "$"))}  # bind mounts are paths
    assert named <= set(COMPOSE["volumes"])


def test_the_model_store_watcher_is_off_by_default():
    assert SERVICES["watch"]["profiles"] == ["watch"]
    assert SERVICES["watch"]["command"][:3] == ["portllm", "base", "watch"]


def test_gpu_worker_reserves_an_nvidia_device():
    devices = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert SERVICES["worker-gpu"]["command"][-1] == "gpu"
    assert SERVICES["worker-serve"]["command"][-1] == "serve"


def test_vllm_serving_is_a_profile_on_a_gpu():
    vllm = SERVICES["worker-serve-vllm"]
    assert vllm["profiles"] == ["vllm"] and vllm["command"][-1] == "serve"
    assert vllm["environment"]["PORTLLM_SERVE_BACKEND"] == "vllm"
    assert vllm["build"]["args"]["VLLM_PACKAGE"].startswith("${VLLM_PACKAGE")
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "artifacts:/data" in vllm["volumes"]  # the patches' paths, as the server loads them


def test_every_variable_is_listed_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    missing = used - env_example_names()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_only_the_bot_publishes_a_port():
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"bot"}


def test_flower_requires_basic_auth_from_the_environment():
    command = " ".join(SERVICES["flower"]["command"])
    assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in command  # compose refuses to start it unset
    assert re.search(r"^FLOWER_BASIC_AUTH=$", (ROOT / ".env.example").read_text(), re.M)


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker client not installed")
def test_docker_compose_config_passes_where_compose_is_installed(tmp_path):
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    env = tmp_path / ".env"
    env.write_text((ROOT / ".env.example").read_text() + "\nFLOWER_BASIC_AUTH=ops:secret\n")
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
