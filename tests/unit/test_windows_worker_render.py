"""Role windows_worker: what it renders, checked by the readers that will read it, and what it checks.

No Windows host and no PowerShell can run here. So the templates are rendered with Ansible's templar and the
role's own defaults and vars, and then read by the code that reads them on Windows: the worker's config by
han_worker's own parser, the supervisor's settings by the supervisor, its environment by the Isaac Lab
backend. The preflight's WinRM messages are checked on errors captured from Ansible and pywinrm against the
FAKE endpoints in tests/fake_windows (tests/integration/test_windows_preflight.py runs the playbook itself).
The supervisor runs here for real, on its POSIX path, with a fake worker.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from han_worker.backends import isaaclab
from han_worker.config import parse_worker_config
from tests.conftest import REPO, ansible_env, run_ansible
from tests.fake_windows import FAKE_MAC_CREDENTIALS as FAKE_CREDENTIALS
from tests.unit import role_templates

ROLE = REPO / "roles" / "windows_worker"
SCRIPTS = REPO / "scripts" / "windows"
CAPTURED = REPO / "tests" / "fake_windows" / "captured"
INSTALL = "C:\\ProgramData\\han-worker"
MAC_PORTS = {"postgres": 15432, "redis": 16379, "s3": 19000}
# FAKE credentials: the shape of the control plane's credentials.json, never a real secret.
SECRETS = ("fake-postgres-password-1234", "fake-redis-password-12345678", "fake-s3-secret-key-1234567")


def load_script(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# By path, not as ansible_collections.han.infra...: importing that package before Ansible's collection loader is
# set up keeps the loader from finding han.infra's plugins later in the same session.
supervisor = load_script("han_worker_supervisor", SCRIPTS / "han_worker_supervisor.py")
winrm_error = load_script("han_infra_filter_winrm_error", REPO / "plugins" / "filter" / "winrm_error.py")


PLAY_VARIABLES: dict[str, Any] = dict(
    inventory_hostname="windows-gpu",
    ansible_check_mode=False,
    ansible_host="192.0.2.20",
    hostvars={"mac-laptop": {"mac_lan_ip": "192.168.1.20", "control_plane_ports": MAC_PORTS}},
    windows_worker_mac_credentials=FAKE_CREDENTIALS,
    _windows_worker_source={"stdout": "5" * 64 + "\n"},
)


def role_variables(**overrides: Any) -> dict[str, Any]:
    """The role's defaults and vars, plus what the play and earlier tasks would set."""
    return role_templates.role_variables(ROLE, PLAY_VARIABLES, overrides)


def evaluate(expression: str, **overrides: Any) -> Any:
    return role_templates.evaluate(role_variables(**overrides), expression)


def render(template: str, **overrides: Any) -> str:
    return role_templates.render(role_variables(**overrides), ROLE / "templates" / template)


# -- worker.json: read by han_worker's own parser --------------------------------------------------------------


def test_worker_config_uses_the_macs_control_plane_for_gpu_and_pose() -> None:
    document = json.loads(render("worker.json.j2"))
    config = parse_worker_config(document, "worker.json")
    assert config.mode == "mac"
    assert config.queues == ("gpu", "pose")
    assert config.mac is not None
    assert config.mac.host == "192.168.1.20"
    assert dict(config.mac.ports) == MAC_PORTS
    assert document["mac"]["credentials_file"] == f"{INSTALL}\\config\\mac-credentials.json"
    assert document["spool_dir"] == f"{INSTALL}\\spool"
    assert "pegasus" not in document


def test_worker_config_takes_the_runbooks_mac_ip_and_the_options() -> None:
    document = json.loads(
        render(
            "worker.json.j2",
            windows_worker_mac_host="10.1.2.3",
            windows_worker_mac_ports={"postgres": "5432", "redis": 6379, "s3": 9000},
            windows_worker_queues=["pose"],
            windows_worker_options={"drain_grace_seconds": 600, "lease_seconds": 60},
        )
    )
    config = parse_worker_config(document, "worker.json")
    assert config.mac is not None
    assert (config.mac.host, dict(config.mac.ports)) == (
        "10.1.2.3",
        {"postgres": 5432, "redis": 6379, "s3": 9000},
    )
    assert (config.queues, config.drain_grace_seconds, config.lease_seconds) == (("pose",), 600.0, 60.0)


def test_no_secret_is_rendered_outside_the_credentials_file() -> None:
    rendered = (
        render("worker.json.j2")
        + render("supervisor.json.j2")
        + str(evaluate("_windows_worker_task_arguments"))
    )
    assert not [secret for secret in SECRETS if secret in rendered]


def test_the_credentials_file_holds_what_the_worker_reads() -> None:
    from han_worker.selection.credentials import parse_credentials  # noqa: PLC0415

    written = json.loads(str(evaluate("_windows_worker_credentials | to_nice_json")))
    credentials = parse_credentials(written, "mac-credentials.json")
    assert credentials.s3.bucket == "han-artifacts"


# -- supervisor.json: read by the supervisor; its environment by the Isaac Lab backend ----------------------


def rendered_settings(tmp_path: Path, **overrides: Any) -> Any:
    path = tmp_path / "supervisor.json"
    path.write_text(render("supervisor.json.j2", **overrides))
    return supervisor.load_settings(path)


def test_supervisor_settings_run_the_venvs_han_worker_with_the_config(tmp_path: Path) -> None:
    settings = rendered_settings(tmp_path)
    assert settings.worker_argv == (
        f"{INSTALL}\\venv\\Scripts\\han-worker.exe", "run", "--config", f"{INSTALL}\\config\\worker.json",
    )  # fmt: skip
    assert settings.log_file == Path(f"{INSTALL}\\logs\\worker.log")
    assert (settings.log_max_bytes, settings.log_backups, settings.stop_timeout_seconds) == (
        10485760,
        5,
        120.0,
    )
    assert settings.stop_file == Path(f"{INSTALL}\\run\\stop")
    assert settings.pid_file == Path(f"{INSTALL}\\run\\supervisor.pid")


def test_the_isaaclab_backend_reads_the_rendered_environment(tmp_path: Path) -> None:
    settings = rendered_settings(tmp_path, windows_worker_environment={"CUDA_VISIBLE_DEVICES": "0"})
    config = isaaclab.load_config(settings.environment)
    assert config.command == (
        "C:\\IsaacLab\\isaaclab.bat", "-p",
        "C:\\IsaacLab\\scripts\\reinforcement_learning\\rsl_rl\\train.py", "--headless",
    )  # fmt: skip
    assert (config.checkpoints, config.stop_grace_s) == (("**/*.pt", "**/*.pth"), 30.0)
    assert settings.environment["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_training_command_with_spaces_and_quotes_survives_as_one_argument_each(tmp_path: Path) -> None:
    command = ["D:\\Isaac Lab\\isaaclab.bat", "-p", 'D:\\scripts\\train "v2".py', "--headless"]
    settings = rendered_settings(tmp_path, windows_worker_isaaclab_command=command)
    assert isaaclab.load_config(settings.environment).command == tuple(command)


# -- the scheduled task ---------------------------------------------------------------------------------------


def test_the_task_runs_the_supervisor_with_only_paths_in_its_arguments() -> None:
    arguments = str(evaluate("_windows_worker_task_arguments"))
    assert arguments == (
        f'"{INSTALL}\\bin\\han_worker_supervisor.py" --settings "{INSTALL}\\config\\supervisor.json"'
    )
    assert evaluate("_windows_worker_venv_python") == f"{INSTALL}\\venv\\Scripts\\python.exe"


@pytest.mark.parametrize(
    ("logon_type", "triggers"),
    [("s4u", [{"type": "boot"}]), ("interactive_token", [{"type": "logon", "user_id": "lab"}])],
)
def test_the_task_starts_at_boot_or_at_the_accounts_logon(logon_type: str, triggers: list[object]) -> None:
    found = evaluate(
        "_windows_worker_task_triggers", windows_worker_logon_type=logon_type, windows_worker_user="lab"
    )
    assert found == triggers


def test_the_install_dir_may_end_with_a_backslash() -> None:
    assert (
        evaluate("_windows_worker_config_file", windows_worker_install_dir="D:\\han\\")
        == "D:\\han\\config\\worker.json"
    )


# -- the venv's spec and the status ----------------------------------------------------------------------------


def test_the_venv_is_current_only_when_its_recorded_spec_has_the_same_checksum() -> None:
    record = str(evaluate("_windows_worker_spec_record"))
    spec = json.loads(record)
    assert spec["han_worker_source"] == "5" * 64
    assert spec["python"] == "C:\\Program Files\\Python311\\python.exe"
    same = {"stat": {"exists": True, "checksum": hashlib.sha1(record.encode()).hexdigest()}}
    assert evaluate("_windows_worker_venv_current", _windows_worker_spec_stat=same) is True
    other = {"stat": {"exists": True, "checksum": "0" * 40}}
    assert evaluate("_windows_worker_venv_current", _windows_worker_spec_stat=other) is False
    assert (
        evaluate("_windows_worker_venv_current", _windows_worker_spec_stat={"stat": {"exists": False}})
        is False
    )


def test_the_status_says_whether_the_task_runs_and_when_it_last_ran() -> None:
    running = {
        "task_exists": True,
        "state": {
            "status": "TASK_STATE_RUNNING",
            "last_run_time": "2026-01-02T03:04:05",
            "last_task_result": 267009,
        },
        "settings": {"enabled": True},
    }
    lines = evaluate("_windows_worker_status_lines", _windows_worker_status_task=running)
    assert lines[0] == "scheduled task \\han\\han-worker: running"
    assert lines[1] == "last run 2026-01-02T03:04:05, last result 267009"
    assert lines[2] == f"log {INSTALL}\\logs\\worker.log (last 20 lines):"
    absent = evaluate("_windows_worker_status_lines", _windows_worker_status_task={"task_exists": False})
    assert absent[0].endswith("not registered (run the playbook with state=started)")
    disabled = {**running, "state": {"status": "TASK_STATE_READY"}, "settings": {"enabled": False}}
    assert evaluate("_windows_worker_status_lines", _windows_worker_status_task=disabled)[0].endswith(
        "ready, disabled"
    )


# -- run_gpu_worker.ps1 (the runbook's manual path) agrees with the role's layout ---------------------------


def test_run_gpu_worker_ps1_starts_the_same_supervisor_with_the_same_settings() -> None:
    script = (SCRIPTS / "run_gpu_worker.ps1").read_text()
    parameters = re.search(r"param \((.*?)\n\)", script, re.DOTALL)
    assert parameters is not None
    assert re.findall(r"\[String\] \$(\w+)", parameters.group(1)) == ["MacIp", "InstallDir"]
    assert f"'{INSTALL}'" in parameters.group(1)
    layout = {
        "venv\\Scripts\\python.exe": "_windows_worker_venv_python",
        "bin\\han_worker_supervisor.py": "_windows_worker_supervisor",
        "config\\supervisor.json": "_windows_worker_settings_file",
    }
    for relative, variable in layout.items():
        assert f"-ChildPath '{relative}'" in script
        assert evaluate(variable) == f"{INSTALL}\\{relative}"
    assert "& $python $supervisor --settings $settings --console" in script
    assert "$env:MAC_LAN_IP = $address.ToString()" in script
    assert "powershell -ExecutionPolicy Bypass -File scripts\\windows\\run_gpu_worker.ps1 -MacIp" in script


# -- credentials, addresses, paths: what the preflight refuses ------------------------------------------------


def credential_problems(credentials: dict[str, Any]) -> list[str]:
    return list(
        json.loads(
            str(evaluate("_windows_worker_credentials_problems", windows_worker_mac_credentials=credentials))
        )
    )


def with_field(section: str, name: str, value: object) -> dict[str, Any]:
    credentials = json.loads(json.dumps(FAKE_CREDENTIALS))
    credentials[section][name] = value
    return credentials


@pytest.mark.parametrize(
    ("credentials", "problems"),
    [
        (FAKE_CREDENTIALS, []),
        (with_field("s3", "access_key", "minioadmin"), ["s3.access_key is a well-known default"]),
        (with_field("s3", "secret_key", "MinioAdmin"), ["s3.secret_key is a well-known default"]),
        (with_field("redis", "password", "short"), ["redis.password is shorter than 16 characters"]),
        (with_field("postgres", "password", "changeme"), ["postgres.password is a well-known default"]),
        (with_field("postgres", "user", "postgres"), []),
        (with_field("postgres", "database", ""), ["postgres.database is missing"]),
        # Credentials from before TLS: no certificate authority to verify PostgreSQL with.
        ({k: v for k, v in FAKE_CREDENTIALS.items() if k != "tls"}, ["tls.ca_cert is missing"]),
        ({**FAKE_CREDENTIALS, "schema": 2}, ["schema must be 1"]),
        ({"schema": 1, "postgres": "x"}, [
            "postgres.user is missing", "postgres.database is missing", "redis.user is missing",
            "s3.access_key is missing", "s3.bucket is missing", "tls.ca_cert is missing",
            "postgres.password is missing", "redis.password is missing", "s3.secret_key is missing",
        ]),
    ],
)  # fmt: skip
def test_credentials_problems_name_fields_never_values(
    credentials: dict[str, Any], problems: list[str]
) -> None:
    found = credential_problems(credentials)
    assert found == problems
    assert not [secret for secret in SECRETS if secret in json.dumps(found)]


def pattern(name: str) -> re.Pattern[str]:
    return re.compile(str(role_variables()[f"_windows_worker_{name}_pattern"]).strip())


@pytest.mark.parametrize(
    ("address", "accepted"),
    [
        ("192.168.1.20", True), ("10.0.0.1", True), ("172.16.0.5", True), ("172.31.255.255", True),
        ("127.0.0.20", True), ("::1", True), ("fd12:3456::1", True),
        ("192.0.2.10", False), ("172.32.0.1", False), ("8.8.8.8", False), ("0.0.0.0", False),
        ("192.168.1.256", False), ("mac.local", False), ("", False), ("10.0.0.1 ", False), ("2001:db8::1", False),
    ],
)  # fmt: skip
def test_private_address_pattern(address: str, accepted: bool) -> None:
    assert bool(pattern("private_address").match(address)) is accepted


@pytest.mark.parametrize(
    ("path", "accepted"),
    [
        ("C:\\ProgramData\\han-worker", True), ("D:\\Isaac Lab\\isaaclab.bat", True),
        ("C:\\Program Files\\Python311\\python.exe", True),
        ("C:\\", False), ("relative\\path", False), ("C:/ProgramData/han", False), ("C:\\a\\..\\b", False),
        ("\\\\server\\share\\x", False), ("C:\\a|b", False),
    ],
)  # fmt: skip
def test_windows_path_pattern(path: str, accepted: bool) -> None:
    assert bool(pattern("path").match(path)) is accepted


@pytest.mark.parametrize(
    ("user", "accepted"),
    [("han-worker", True), ("LAB\\alice", True), ("alice smith", True), ("", False), ("a/b", False),
     ("x" * 21, False)],
)  # fmt: skip
def test_user_pattern(user: str, accepted: bool) -> None:
    assert bool(pattern("user").match(user)) is accepted


# -- the preflight's WinRM messages, on errors captured against the fakes -----------------------------------

EXPECTED_KIND = {
    "fake-windows-closed-port": "unreachable",
    "fake-windows-dropped": "unreachable",
    "fake-windows-silent": "unreachable",
    "fake-windows-unresolvable": "unreachable",
    "fake-windows-wrong-password": "authentication",
    "fake-windows-ntlm-on-basic-only": "authentication",
    "fake-windows-not-winrm": "transport",
    "fake-windows-garbage": "transport",
    "fake-windows-https-to-http": "transport",
    "fake-windows-http-to-https": "transport",
    "fake-windows-http-to-https-remote-disconnected": "transport",
    "fake-windows-self-signed": "certificate",
}


def captured(name: str) -> str:
    return (CAPTURED / f"{name}.txt").read_text().strip()


def test_every_captured_error_has_an_expected_kind() -> None:
    assert sorted(path.stem for path in CAPTURED.glob("*.txt")) == sorted(EXPECTED_KIND)


@pytest.mark.parametrize(("name", "kind"), sorted(EXPECTED_KIND.items()))
def test_captured_winrm_errors_are_classified(name: str, kind: str) -> None:
    assert winrm_error.classify(captured(name))[0] == kind


def explain(text: object, scheme: str = "https") -> str:
    return winrm_error.explain(text, "windows-gpu", "192.0.2.20", 5986, scheme)


def test_each_kind_names_the_host_the_endpoint_and_what_to_check() -> None:
    endpoint = "windows-gpu: WinRM at https://192.0.2.20:5986/wsman"
    assert explain(captured("fake-windows-closed-port")).startswith(
        f"{endpoint} does not answer (connection refused)"
    )
    assert "firewall" in explain(captured("fake-windows-dropped"))
    assert "(the name does not resolve)" in explain(captured("fake-windows-unresolvable"))
    login = explain({"msg": captured("fake-windows-ntlm-on-basic-only"), "unreachable": True})
    assert login.startswith(f"{endpoint} refused the login (HTTP 401, transport ntlm)")
    assert "ansible_password" in login
    wrong_scheme = explain(captured("fake-windows-https-to-http"))
    assert "(TLS sent to a plain HTTP listener)" in wrong_scheme
    assert "ansible_winrm_scheme" in wrong_scheme
    certificate = explain(captured("fake-windows-self-signed"))
    assert "failed verification (self-signed certificate)" in certificate
    assert "ansible_winrm_ca_trust_path" in certificate


def test_an_unknown_error_is_passed_on_with_the_settings_to_check() -> None:
    message = explain("Task failed: basic: something nobody has seen")
    assert message.startswith(
        "windows-gpu: WinRM at https://192.0.2.20:5986/wsman failed: Task failed: basic: something"
    )
    assert "ansible_winrm_transport" in message


def test_ansibles_own_timeout_message_is_unreachable() -> None:
    # Raised by ansible/plugins/connection/winrm.py itself when pywinrm reports "Operation timed out".
    assert winrm_error.classify("the connection attempt timed out")[0] == "unreachable"


def test_the_filter_is_found_through_the_collection(tmp_path: Path) -> None:
    (tmp_path / "error.txt").write_text(captured("fake-windows-wrong-password"))
    expression = "{{ lookup('ansible.builtin.file', error) | han.infra.winrm_error(host='h', address='a', port=5985, scheme='http') }}"
    result = run_ansible(
        "ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.debug",
        "-a", f"msg={expression}", "-e", f"error={tmp_path / 'error.txt'}",
        env=ansible_env(ANSIBLE_PYTHON_INTERPRETER=sys.executable),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "h: WinRM at http://a:5985/wsman refused the login (HTTP 401, transport basic)" in result.stdout


# -- the supervisor, run here on its POSIX path with a fake worker -------------------------------------------

FAKE_WORKER = """\
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("fake worker: draining", flush=True), sys.exit(0)))
print("fake worker: started with", sys.argv[1:], flush=True)
for line in range(int(sys.argv[1])):
    print(f"fake worker: line {line:05d} " + "x" * 60, flush=True)
if sys.argv[2] == "exit":
    sys.exit(7)
while True:
    time.sleep(0.1)
"""


def write_settings(tmp_path: Path, lines: int, then: str, **changes: object) -> Path:
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    settings = {
        "worker_argv": [sys.executable, str(worker), str(lines), then],
        "environment": {"HAN_FAKE": "1"},
        "log_file": str(tmp_path / "logs" / "worker.log"),
        "log_max_bytes": 4096,
        "log_backups": 3,
        "stop_file": str(tmp_path / "run" / "stop"),
        "pid_file": str(tmp_path / "run" / "supervisor.pid"),
        "stop_timeout_seconds": 10,
        "restart_delay_seconds": 0.2,
        "restart_delay_max_seconds": 0.4,
        **changes,
    }
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps(settings))
    return path


def start_supervisor(settings: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, str(SCRIPTS / "han_worker_supervisor.py"), "--settings", str(settings)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def all_log_text(tmp_path: Path) -> str:
    return "".join(path.read_text() for path in sorted((tmp_path / "logs").glob("worker.log*")))


def test_supervisor_rotates_the_log_and_drains_the_worker_on_the_stop_file(tmp_path: Path) -> None:
    process = start_supervisor(write_settings(tmp_path, lines=300, then="wait"))
    try:
        wait_for(lambda: "line 00299" in all_log_text(tmp_path))
        (tmp_path / "run" / "stop").write_text("stop\n")
        assert process.wait(15) == 0
    finally:
        process.kill()
    logs = sorted(path.name for path in (tmp_path / "logs").iterdir())
    assert logs == ["worker.log", "worker.log.1", "worker.log.2", "worker.log.3"]
    assert all(path.stat().st_size <= 4096 for path in (tmp_path / "logs").iterdir())
    text = (tmp_path / "logs" / "worker.log").read_text()
    assert "fake worker: draining" in text
    assert "han-worker stopped with exit code 0" in text
    assert not (tmp_path / "run" / "stop").exists()


def test_supervisor_restarts_a_worker_that_exits(tmp_path: Path) -> None:
    process = start_supervisor(write_settings(tmp_path, lines=1, then="exit"))
    try:
        wait_for(lambda: all_log_text(tmp_path).count("fake worker: started") >= 3)
        (tmp_path / "run" / "stop").write_text("stop\n")
        assert process.wait(15) == 0
    finally:
        process.kill()
    text = all_log_text(tmp_path)
    assert "han-worker exited with code 7; starting it again in 0.2s" in text
    assert "starting it again in 0.4s" in text


def test_supervisor_keeps_trying_a_worker_that_cannot_start(tmp_path: Path) -> None:
    settings = write_settings(
        tmp_path, lines=1, then="wait", worker_argv=[str(tmp_path / "no-such-han-worker")]
    )
    process = start_supervisor(settings)
    try:
        wait_for(lambda: all_log_text(tmp_path).count("han-worker cannot be started") >= 2)
        (tmp_path / "run" / "stop").write_text("stop\n")
        assert process.wait(15) == 0
    finally:
        process.kill()
    assert "No such file or directory" in all_log_text(tmp_path)


def test_a_second_supervisor_refuses_to_start(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, lines=1, then="wait")
    first = start_supervisor(settings)
    try:
        wait_for(lambda: "fake worker: started" in all_log_text(tmp_path))
        second = start_supervisor(settings)
        assert second.wait(15) == 3
        assert f"another supervisor (pid {first.pid}) already runs this worker" in second.communicate()[1]
        first.terminate()  # SIGTERM to the supervisor drains like the stop file
        assert first.wait(15) == 0
    finally:
        first.kill()


def test_supervisor_settings_errors_name_the_field(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, lines=1, then="wait", worker_argv=[], log_backups="5")
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "han_worker_supervisor.py"), "--settings", str(settings)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "field 'worker_argv' must be a non-empty list of non-empty strings" in result.stderr


# -- module arguments: ansible-lint does not check those of PowerShell modules, so this does ---------------


def role_tasks() -> list[tuple[str, str, dict[str, Any]]]:
    """(file, module, arguments) of every Windows module the role calls, blocks included."""
    found: list[tuple[str, str, dict[str, Any]]] = []

    def walk(tasks: list[dict[str, Any]], source: str) -> None:
        for task in tasks:
            for section in ("block", "rescue", "always"):
                walk(task.get(section) or [], source)
            for key, value in task.items():
                if key.startswith(("ansible.windows.", "community.windows.")):
                    found.append((source, key, dict(value or {})))

    for path in sorted((ROLE / "tasks").glob("*.yml")):
        walk(yaml.safe_load(path.read_text()) or [], path.name)
    return found


@pytest.fixture(scope="module")
def module_docs() -> dict[str, Any]:
    modules = sorted({module for _source, module, _args in role_tasks()})
    result = run_ansible("ansible-doc", "--json", "-t", "module", *modules)
    assert result.returncode == 0, result.stderr
    return {name: entry["doc"] for name, entry in json.loads(result.stdout).items()}


def option_names(options: dict[str, Any]) -> set[str]:
    return {alias for name, spec in options.items() for alias in (name, *spec.get("aliases", []))}


def check_arguments(arguments: dict[str, Any], options: dict[str, Any], where: str) -> list[str]:
    problems = [
        f"{where}: unknown option {name!r}" for name in sorted(set(arguments) - option_names(options))
    ]
    for name, value in arguments.items():
        spec = options.get(name, {})
        literal = not (isinstance(value, str) and "{{" in value)
        # A flags option such as win_acl's inherit takes several choices, comma-separated.
        values = [part.strip() for part in value.split(",")] if isinstance(value, str) else [value]
        if (
            literal
            and spec.get("choices")
            and not {str(v) for v in values} <= {str(c) for c in spec["choices"]}
        ):
            problems.append(f"{where}: {name}={value!r} is not one of {spec['choices']}")
        if literal and spec.get("suboptions") and isinstance(value, list):
            for item in value:
                problems += check_arguments(item, spec["suboptions"], f"{where}.{name}[]")
    missing = [name for name, spec in options.items() if spec.get("required") and name not in arguments]
    return problems + [f"{where}: required option {name!r} is missing" for name in missing]


def test_the_role_calls_windows_modules() -> None:
    modules = {module for _source, module, _args in role_tasks()}
    assert {
        "ansible.windows.win_ping",
        "community.windows.win_scheduled_task",
        "ansible.windows.win_acl",
    } <= modules


def test_every_windows_module_argument_is_one_the_module_documents(module_docs: dict[str, Any]) -> None:
    problems: list[str] = []
    for source, module, arguments in role_tasks():
        problems += check_arguments(
            arguments, module_docs[module].get("options") or {}, f"{source}: {module}"
        )
    assert problems == []


def test_the_argument_check_catches_a_misspelt_option(module_docs: dict[str, Any]) -> None:
    options = module_docs["community.windows.win_scheduled_task"]["options"]
    problems = check_arguments(
        {"name": "x", "logon_type": "s4u_typo", "actions": [{"path": "a", "argument": "b"}], "run_levle": "limited"},
        options, "task",
    )  # fmt: skip
    assert problems == [
        "task: unknown option 'run_levle'",
        "task: logon_type='s4u_typo' is not one of ['none', 'password', 's4u', 'interactive_token', 'group', "
        "'service_account', 'token_or_password']",
        "task.actions[]: unknown option 'argument'",
    ]
