"""docker-compose.yaml validates and names only things that exist (no Docker engine here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
#: Services the team stack must have (DESIGN §9).
REQUIRED = {
    "postgres",
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "spark-master",
    "spark-worker",
    "dask-scheduler",
    "dask-worker",
    "serving",
}
#: Executables our image provides (installed by `pip install -e .` of setup.cfg) or scripts in docker/.
IMAGE_COMMANDS = {
    "airflow": "apache-airflow",
    "spark-class": "pyspark",
    "dask": "distributed",
    "uvicorn": "uvicorn",
    "lockstep": "lockstep",
    "python": None,
}


def _env_example() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def _interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m):
        name, op, default = m.group(1), m.group(2), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name} is required: {default}")
        return default or ""

    text = text.replace("$$", "\0")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", sub, text).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate(COMPOSE.read_text(), _env_example()))


def test_every_required_variable_is_in_env_example():
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    missing = names - set(_env_example())
    assert not missing, f"variables used by docker-compose.yaml but not documented in .env.example: {missing}"


def test_interpolation_fails_without_the_secrets():
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _interpolate(COMPOSE.read_text(), {})


def test_the_stack_has_every_service(compose):
    assert REQUIRED <= set(compose["services"])


def test_every_service_has_a_health_check_or_is_a_one_shot_job(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":
            continue
        assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name} has no health check"


def test_depends_on_targets_exist_and_wait_for_health(compose):
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            want = "service_completed_successfully" if services[dep].get("restart") == "no" else "service_healthy"
            assert cond["condition"] == want, f"{name} -> {dep}: {cond}"


def test_builds_commands_and_paths_exist_in_the_repo(compose):
    for name, svc in compose["services"].items():
        if "build" in svc:
            ctx = REPO / svc["build"]["context"]
            assert (ctx / svc["build"].get("dockerfile", "Dockerfile")).is_file(), name
            cmd = svc.get("command") or ["lockstep"]
            exe = cmd[0]
            if exe.startswith("/opt/lockstep/"):
                script = REPO / exe.removeprefix("/opt/lockstep/")
                assert script.is_file() and os.access(script, os.X_OK), f"{name}: {script} missing or not executable"
            else:
                assert exe in IMAGE_COMMANDS, f"{name}: unknown command {exe}"
            for arg in cmd:
                if ":" in arg and arg.startswith("jobs."):
                    module, _, attr = arg.partition(":")
                    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name}: {module}"
                    assert f"def {attr}(" in (REPO / (module.replace(".", "/") + ".py")).read_text()
        else:
            assert re.match(r"^[a-z0-9/._-]+:[A-Za-z0-9._-]+$", svc["image"]), f"{name}: pin a tag ({svc['image']})"
            assert not svc["image"].endswith(":latest")
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"{name}: bind mount {src} missing"
            else:
                assert src in compose["volumes"], f"{name}: undeclared volume {src}"
        hc = (svc.get("healthcheck") or {}).get("test") or []
        for arg in hc:
            if arg.startswith("/opt/lockstep/"):
                assert (REPO / arg.removeprefix("/opt/lockstep/")).is_file(), f"{name}: {arg}"


def test_cluster_services_run_what_the_cluster_tests_start(compose):
    """tests/jobs/engines/clusters.py starts these same programs on loopback; the tests prove them."""
    svc = compose["services"]
    assert svc["spark-master"]["command"][:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    assert svc["spark-worker"]["command"][:3] == [
        "spark-class",
        "org.apache.spark.deploy.worker.Worker",
        "spark://spark-master:7077",
    ]
    assert svc["spark-worker"]["command"][3:7] == ["--cores", "2", "--memory", "4g"]
    assert "-Dspark.master.rest.enabled=false" in svc["spark-master"]["environment"]["SPARK_MASTER_OPTS"]
    assert svc["dask-scheduler"]["command"][:2] == ["dask", "scheduler"]
    worker = svc["dask-worker"]["command"]
    assert worker[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert worker[worker.index("--nthreads") + 1] == "2" and worker[worker.index("--memory-limit") + 1] == "4GiB"
    for name in ("spark-master", "spark-worker", "dask-scheduler", "dask-worker"):
        env = svc[name]["environment"]
        assert env["LOCKSTEP_SPARK_MASTER"] == "spark://spark-master:7077"
        assert env["LOCKSTEP_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"


def test_the_lake_is_shared_by_every_job_runner(compose):
    for name in ("airflow-scheduler", "spark-worker", "dask-worker", "serving"):
        assert any(v.startswith("lake:") for v in compose["services"][name]["volumes"]), name


def test_dockerfile_copies_only_existing_paths():
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                if "[" in src:
                    continue  # an optional glob (COPY fails only when nothing at all matches)
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"
    assert "pip install" in (REPO / "Dockerfile").read_text()


def test_airflow_dag_folder_in_the_image_is_the_repo_dags(compose):
    env = compose["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/lockstep/dags"
    assert (
        "COPY dags dags" in (REPO / "Dockerfile").read_text()
        and "WORKDIR /opt/lockstep" in (REPO / "Dockerfile").read_text()
    )


@pytest.mark.skipif(
    not shutil.which("docker-compose"), reason="docker-compose not installed (apt-get install docker-compose)"
)
def test_docker_compose_config_accepts_the_file():
    proc = subprocess.run(
        ["docker-compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
