"""``docker-compose.yml`` and the ``Dockerfile``, checked without a container engine.

Every service's command must be a real entry point (``tmpq`` sub-commands parsed by ``server.cli.build_parser()``,
``ray start`` options parsed by Ray's own CLI), every ``TMPQ_*`` variable must be one the code reads, and a compose
client must accept the file: Debian's ``docker-compose`` (v1) runs ``config``, which needs no engine. Without that
binary the last test skips, except when ``CI=true``: then it fails.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from server.api.routes import meta
from server.cli import build_parser
from server.settings import Settings
from server.version import API_PREFIX

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SOURCES = ("search", "supernet", "server", "workers")
SERVICES = {"postgres", "ray-head", "ray-worker", "api", "runner"}
OUR_SERVICES = SERVICES - {"postgres"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def substitute(text: str) -> str:
    """Compose's ``${NAME:-default}`` interpolation, with every variable unset."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def commands(command: str | list[str]) -> list[list[str]]:
    """The programs a service command runs: ``sh -c "a && exec b"`` is ``[a, b]``."""
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if argv[:2] != ["sh", "-c"]:
        return [[substitute(a) for a in argv]]
    assert len(argv) == 3, f"sh -c takes one script: {argv}"
    programs = []
    for part in re.split(r"&&|;", argv[2]):
        words = shlex.split(substitute(part))
        programs.append(words[1:] if words[:1] == ["exec"] else words)
    return programs


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(k): None if v is None else str(v) for k, v in env.items()}


def ray_cli() -> Any:
    from ray.scripts.scripts import cli

    return cli


def parse_ray(argv: list[str]) -> dict[str, Any]:
    """Ray's own click parser on ``ray <sub-command> ...`` (nothing runs); returns the options."""
    import click

    assert argv[0] == "ray", argv
    command = ray_cli().commands[argv[1]]
    try:
        return command.make_context(argv[1], argv[2:]).params
    except click.UsageError as exc:
        pytest.fail(f"`{shlex.join(argv)}` is not a valid Ray command: {exc}")


def parse_tmpq(argv: list[str]) -> Any:
    """``server.cli.build_parser()`` on a ``tmpq`` command line (nothing runs); fails the test on a usage error."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("tmpq") == "server.cli:main", "the `tmpq` console script must be server.cli:main"
    assert argv[0] == "tmpq", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"`{shlex.join(argv)}` is not a valid tmpq command line (exit {exc.code})")


# -- the file's shape ---------------------------------------------------------------------------------------


def test_services_volumes_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    postgres = services["postgres"]
    assert any(v.split(":")[0] in compose["volumes"] for v in postgres["volumes"]), "PostgreSQL needs a named volume"
    env = environment(postgres)
    assert postgres["healthcheck"]["test"] == [
        "CMD",
        "pg_isready",
        "-U",
        env["POSTGRES_USER"],
        "-d",
        env["POSTGRES_DB"],
    ]
    for name in OUR_SERVICES:
        service = services[name]
        assert service["image"] == "tmpq:latest" and service["build"] == ".", name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts.keys() >= {"/models", "/data"} and set(mounts.values()) <= set(compose["volumes"]), name
    worker = services["ray-worker"]
    assert "container_name" not in worker and "ports" not in worker, "ray-worker must scale (--scale ray-worker=N)"
    assert {"ray-head", "ray-worker", "runner"} <= {n for n in services if services[n].get("shm_size")}
    for name, needs in (("ray-worker", {"ray-head"}), ("api", {"postgres"}), ("runner", {"postgres", "ray-head"})):
        depends = services[name]["depends_on"]
        assert set(depends) == needs and all(d["condition"] == "service_healthy" for d in depends.values()), name
        assert all("healthcheck" in services[d] for d in depends), name
    # the GPU reservation is there, commented out, in the ray-worker service: uncommented, it is valid
    text = COMPOSE.read_text()
    worker_text = text[text.index("\n  ray-worker:") : text.index("\n  api:")]
    lines = worker_text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() == "# deploy:")
    block = [line.replace("# ", "", 1) for line in lines[first:] if line.strip().startswith("#")]
    deploy = yaml.safe_load("\n".join(block))["deploy"]
    device = deploy["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_every_command_is_a_real_entry_point(compose: dict[str, Any]) -> None:
    services = compose["services"]
    head = parse_ray(commands(services["ray-head"]["command"])[0])
    assert head["head"] and head["block"] and head["dashboard_host"] == "0.0.0.0" and head["num_cpus"] >= 0
    head_address = f"ray-head:{head['port']}"

    worker = commands(services["ray-worker"]["command"])
    assert len(worker) == 1
    params = parse_ray(worker[0])
    assert worker[0][1] == "start" and params["address"] == head_address and params["block"] and not params["head"]

    api = commands(services["api"]["command"])
    assert len(api) == 1 and api[0][:2] == ["tmpq", "serve"]
    args = parse_tmpq(api[0])
    assert (args.command, args.host, args.port, args.no_runner) == ("serve", "0.0.0.0", 8000, True)

    for bad in (["tmpq", "serve", "--hots", "0.0.0.0"], ["tmpq", "runnr"]):  # the checks can fail
        with pytest.raises(pytest.fail.Exception):
            parse_tmpq(bad)
    with pytest.raises(pytest.fail.Exception):
        parse_ray(["ray", "start", "--head", "--prot=6379"])

    runner = commands(services["runner"]["command"])
    assert [argv[:2] for argv in runner] == [["ray", "start"], ["tmpq", "runner"]]
    joined = parse_ray(runner[0])
    assert joined["address"] == head_address and not joined["block"] and joined["num_cpus"] == 0
    assert parse_tmpq(runner[1]).command == "runner"

    # healthchecks: Ray's own health check on the head's port; the API's liveness route on its port
    check = services["ray-head"]["healthcheck"]["test"]
    assert check[0] == "CMD" and parse_ray(check[1:])["address"] == f"127.0.0.1:{head['port']}"
    check = services["api"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"] and "urllib.request.urlopen" in check[3]
    url = urlsplit(re.search(r"'(http://[^']+)'", check[3]).group(1))
    assert url.port == args.port and url.path == "/api/v1/healthz"
    compile(check[3], "healthcheck", "exec")
    assert url.path in {API_PREFIX + route.path for route in meta.router.routes}


def tmpq_variables_read_by_the_code() -> set[str]:
    """``TMPQ_<FIELD>`` of every ``Settings`` field, plus every ``"TMPQ_..."`` string constant in the packages
    (the names passed to ``os.environ``)."""
    names = {f"TMPQ_{field.upper()}" for field in Settings.model_fields}
    for package in SOURCES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                constant = isinstance(node, ast.Constant) and isinstance(node.value, str)
                if constant and re.fullmatch(r"TMPQ_[A-Z0-9_]+", node.value):
                    names.add(node.value)
    return names


def test_every_tmpq_variable_is_read_by_the_code(compose: dict[str, Any]) -> None:
    known = tmpq_variables_read_by_the_code()
    assert {"TMPQ_DATABASE_URL", "TMPQ_RAY_ADDRESS", "TMPQ_MODEL_ROOT", "TMPQ_DATA_DIR", "TMPQ_API_TOKEN"} <= known
    used: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        for variable in environment(service):
            if variable.startswith("TMPQ_"):
                used.setdefault(variable, set()).add(name)
    for match in _VARIABLE.finditer(COMPOSE.read_text()):
        if match.group(1).startswith("TMPQ_"):
            used.setdefault(match.group(1), set()).add("${...}")
    for line in DOCKERFILE.read_text().splitlines():
        used.update({v: {"Dockerfile"} for v in re.findall(r"\b(TMPQ_[A-Z0-9_]+)=", line)})
    unknown = {v: sorted(where) for v, where in used.items() if v not in known}
    assert not unknown, f"TMPQ_* variables that no code reads: {unknown}"

    services = compose["services"]
    api, runner = environment(services["api"]), environment(services["runner"])
    assert api["TMPQ_API_TOKEN"] is None, "the token comes from the environment of `docker compose`"
    for env in (api, runner):
        assert env["TMPQ_MODEL_ROOT"] == "/models" and env["TMPQ_DATA_DIR"] == "/data"
        db = urlsplit(substitute(env["TMPQ_DATABASE_URL"]))
        assert db.scheme == "postgresql+psycopg" and db.hostname == "postgres" and db.port == 5432
        assert db.path == f"/{environment(services['postgres'])['POSTGRES_DB']}"
        assert env["TMPQ_RAY_ADDRESS"] == "ray-head:6379"
        settings = Settings(**{k[5:].lower(): substitute(v) for k, v in env.items() if v is not None})
        assert settings.ray_address == "ray-head:6379"


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    pinned = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pinned)}$", text, re.M), "torch as pinned in constraints.txt"
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in text
    assert re.search(r"^RUN pip install -c constraints.txt \.$", text, re.M)
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for include in packages["include"]:
        assert f"COPY {include.rstrip('*')} ./{include.rstrip('*')}" in text
    # supernet.zoo.testbed.TESTBED_DIR and supernet.zoo.features.FEATURES_DIR are <site-packages>/models/... there
    assert "COPY models /models" in text and 'RUN ln -s /models "$(python -c' in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data", "out"} <= {line.strip("/") for line in ignored}


# -- a compose client ---------------------------------------------------------------------------------------


def test_a_compose_client_accepts_the_file(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        reason = "docker-compose is not installed (apt-get install docker-compose)"
        if in_ci():
            pytest.fail(f"{reason}: mandatory when CI=true")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "TMPQ_", "POSTGRES_"))}
    env.update(HOME=str(tmp_path), RAY_WORKER_CPUS="3")
    done = subprocess.run(
        [binary, "--project-directory", str(REPO), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == SERVICES
    assert "--num-cpus=3" in resolved["services"]["ray-worker"]["command"]
    assert resolved["services"]["runner"]["environment"]["TMPQ_RAY_ADDRESS"] == "ray-head:6379"
    assert resolved["services"]["api"]["healthcheck"]["test"][:2] == ["CMD", "python"]
