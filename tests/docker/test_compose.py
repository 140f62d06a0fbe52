"""docker-compose.yml and docker/nginx.conf: the fleet (Redis, persistent, two replicas behind
nginx), the demo-bundle job, the load profile. `docker compose config` (or compose v1's
`docker-compose config`) validates the file where installed; `nginx -t` checks nginx.conf
where nginx is installed. No Docker engine is needed for either."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from testkit.tools import require_tool, running_in_ci
from tests.docker.conftest import (
    DOCKER,
    ROOT,
    assert_redis_keeps_writes_across_a_crash,
    redis_options,
)

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
REPLICAS = ("service-1", "service-2")
NGINX_CONF = (DOCKER / "nginx.conf").read_text()


def upstream_servers(conf: str) -> list[str]:
    [block] = re.findall(r"upstream\s+\w+\s*\{(.*?)\}", conf, re.S)
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block, re.M)


def test_the_fleet_is_redis_two_replicas_a_load_balancer_a_demo_job_and_locust():
    assert set(SERVICES) == {"redis", *REPLICAS, "lb", "demo-bundle", "locust"}


def test_the_replicas_share_redis_and_have_names_and_model_stores_of_their_own(
    settings_env_vars,
):
    envs = [SERVICES[name]["environment"] for name in REPLICAS]
    assert {env["REDIS_URL"] for env in envs} == {"redis://redis:6379/0"}
    assert [env["REPLICA_ID"] for env in envs] == list(REPLICAS)
    for name, env in zip(REPLICAS, envs, strict=True):
        assert set(env) <= settings_env_vars, set(env) - settings_env_vars
        assert SERVICES[name]["build"]["dockerfile"] == "docker/Dockerfile.serve"
        assert "volumes" not in SERVICES[name]  # the image's /models: one per container
        assert "redis" in SERVICES[name]["depends_on"]


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """{target: source} of a service's volumes, short (`src:dst[:mode]`) or long syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *_ = volume.split(":")
            out[target] = source
        else:
            out[volume["target"]] = volume.get("source", "")
    return out


def test_redis_appends_every_write_to_a_file_flushed_every_second():
    options = redis_options(SERVICES["redis"]["command"])
    assert options["appendonly"] == "yes"
    assert options["appendfsync"] == "everysec"
    assert options.get("dir", "/data") == "/data"  # the image's working directory otherwise


def test_redis_keeps_its_data_in_a_named_volume_at_data():
    source = volume_mounts(SERVICES["redis"]).get("/data")
    assert source, "nothing is mounted at /data: the AOF would die with the container"
    assert not source.startswith((".", "/", "~")), f"{source} is a host path, not a volume"
    assert source in (COMPOSE.get("volumes") or {}), f"volume {source} is not declared"
    for name, service in SERVICES.items():  # Redis's files are Redis's alone
        if name != "redis":
            assert source not in volume_mounts(service).values(), name


def test_redis_with_the_compose_options_keeps_writes_across_a_crash(tmp_path: Path):
    assert_redis_keeps_writes_across_a_crash(SERVICES["redis"]["command"], tmp_path)


def test_nginx_balances_both_replicas_on_port_8000():
    assert upstream_servers(NGINX_CONF) == [f"{name}:8000" for name in REPLICAS]
    assert re.search(r"^\s*listen\s+8000;", NGINX_CONF, re.M)
    assert re.search(r"proxy_pass\s+http://recsys;", NGINX_CONF)
    lb = SERVICES["lb"]
    assert "8000:8000" in lb["ports"]
    assert "./docker/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    assert set(lb["depends_on"]) == set(REPLICAS)


def test_nginx_lets_uploads_as_large_as_the_service_accepts_through():
    [size] = re.findall(r"client_max_body_size\s+(\d+)m;", NGINX_CONF)
    assert int(size) * 1024 * 1024 == Settings.model_fields["max_upload_bytes"].default


def test_long_running_services_have_healthchecks(get_routes):
    for name in ("redis", *REPLICAS, "lb"):
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD", name
    for name in (*REPLICAS, "lb"):
        [path] = re.findall(
            r"127\.0\.0\.1:8000(/\w+)", " ".join(SERVICES[name]["healthcheck"]["test"])
        )
        assert path in get_routes, name


def test_the_demo_job_builds_the_bundle_with_the_pipeline_image_then_uploads_it():
    job = SERVICES["demo-bundle"]
    assert job["build"]["dockerfile"] == "docker/Dockerfile.pipeline"
    script = " ".join(job["command"])
    build, upload = script.index("models demo"), script.index("recsys-admin push")
    assert build < upload
    assert "/bundles/demo.tar.gz --activate" in script
    assert job["environment"]["RECSYS_URL"] == "http://lb:8000"
    assert (
        job["environment"]["RECSYS_ADMIN_TOKEN"]
        == SERVICES["service-1"]["environment"]["ADMIN_TOKEN"]
    )
    assert job["depends_on"]["lb"]["condition"] == "service_healthy"
    assert job["restart"] == "no"


def test_locust_runs_the_benchmark_locustfile_against_nginx_in_the_load_profile():
    locust = SERVICES["locust"]
    assert locust["profiles"] == ["load"]
    assert locust["command"][:2] == ["--host", "http://lb:8000"]
    dockerfile = (ROOT / locust["build"]["dockerfile"]).read_text()
    assert "benchmarks/locustfile.py" in dockerfile
    documented = (ROOT / "benchmarks" / "locustfile.py").read_text()
    for var, path in locust["environment"].items():
        assert var in documented  # LOCUST_VOCAB / LOCUST_DATA, read by the locustfile
        assert path.startswith("/bundles/")  # the demo job's volume
    assert "bundles:/bundles:ro" in locust["volumes"]


def test_every_build_names_a_dockerfile_that_exists():
    for name, service in SERVICES.items():
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file(), name


# command, what a failed `version` probe means, whether .ci/tools installs it (Debian ships
# docker-compose, but not the docker CLI's compose plugin)
COMPOSE_TOOLS = {
    "docker compose": (["docker", "compose"], "the docker CLI has no compose plugin", False),
    "docker-compose": (["docker-compose"], "docker-compose is not installed", True),
}


@pytest.mark.parametrize("tool", COMPOSE_TOOLS)
def test_compose_config_validates(tool):
    command, missing, installed_in_ci = COMPOSE_TOOLS[tool]
    command = [require_tool(command[0], in_ci=installed_in_ci), *command[1:]]
    probe = subprocess.run([*command, "version"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        stop = pytest.fail if installed_in_ci and running_in_ci() else pytest.skip
        stop(f"{missing}: `{tool} config` not run")
    env = {**os.environ, "ADMIN_TOKEN": "t" * 32}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--profile", "load", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_nginx_accepts_the_config(tmp_path: Path):
    nginx = require_tool("nginx")
    # The replicas' names resolve only inside compose's network: check against localhost.
    site = tmp_path / "site.conf"
    site.write_text(
        re.sub(r"\bservice-\d+:8000", "127.0.0.1:8000", NGINX_CONF).replace(
            "listen 8000;", "listen 127.0.0.1:18000;"
        )
    )
    temp_paths = "".join(
        f"  {kind}_temp_path {tmp_path}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nevents {{}}\n"
        f"http {{\n  access_log off;\n{temp_paths}  include {site};\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
