"""What the collection and the package declare matches what they use and what is tested."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.conftest import REPO

COLLECTION_ROOTS = [Path(root) for root in __import__("ansible_collections").__path__]
FQCN = re.compile(r"\b([a-z_]+\.[a-z_]+)\.[a-z_]+:")


def galaxy() -> dict[str, object]:
    return dict(yaml.safe_load((REPO / "galaxy.yml").read_text()))


def declared() -> dict[str, str]:
    dependencies = galaxy()["dependencies"]
    assert isinstance(dependencies, dict)
    return {str(name): str(version) for name, version in dependencies.items()}


def used_collections() -> set[str]:
    used = set()
    for path in [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("playbooks/**/*.yml")]:
        used |= set(FQCN.findall(path.read_text()))
    return used - {"ansible.builtin", "han.infra"}


def test_every_collection_the_roles_call_is_declared_and_nothing_else() -> None:
    assert set(declared()) == used_collections()


def test_the_checkouts_requirements_say_what_galaxy_yml_says() -> None:
    requirements = yaml.safe_load((REPO / "collections" / "requirements.yml").read_text())["collections"]
    assert {entry["name"]: entry["version"] for entry in requirements} == declared()


def test_the_installed_collections_satisfy_the_declared_ranges() -> None:
    for name, versions in declared().items():
        where = next(
            root / name.replace(".", "/")
            for root in COLLECTION_ROOTS
            if (root / name.replace(".", "/")).is_dir()
        )
        manifest = yaml.safe_load((where / "MANIFEST.json").read_text())
        installed = manifest["collection_info"]["version"]
        assert SpecifierSet(versions).contains(installed), f"{name} {installed} is not in {versions}"


def test_requires_ansible_is_the_tested_ansible_core() -> None:
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    tested = metadata.version("ansible-core")
    assert SpecifierSet(runtime["requires_ansible"]).contains(tested)
    assert runtime["requires_ansible"] == ">=" + ".".join(tested.split(".")[:2]) + ".0"


def requirements(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(line) for line in listed]


def test_no_requirement_is_listed_twice_on_the_way_to_an_install() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for extra in project["optional-dependencies"]:
        seen: list[str] = [requirement.name for requirement in requirements(None)]
        pending = [extra]
        while pending:
            for requirement in requirements(pending.pop()):
                if requirement.name == "han-worker":
                    pending.extend(requirement.extras)
                else:
                    seen.append(requirement.name)
        assert len(seen) == len(set(seen)), (
            f"[{extra}] lists {sorted(n for n in seen if seen.count(n) > 1)} twice"
        )


def test_the_controller_extra_holds_no_test_tool() -> None:
    names = {requirement.name for requirement in requirements("controller")}
    assert {"ansible", "ansible-runner", "pywinrm"} <= names
    assert not names & {"pytest", "molecule", "pytest-testinfra", "ansible-lint", "mypy", "ruff"}


def test_the_license_both_manifests_name_is_in_the_repository() -> None:
    assert galaxy()["license"] == ["MIT"]
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
