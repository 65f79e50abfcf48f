"""Every role documents each of its defaults in meta/argument_specs.yml, with the same value.

A role with several entry points (tasks_from) may document an option in each: the same default everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from han_worker.selection.policy import MODES
from tests.conftest import REPO

ROLES = sorted(path.name for path in (REPO / "roles").iterdir() if (path / "tasks").is_dir())


def load_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.safe_load(handle)


def entry_point_options(role: str) -> dict[str, Any]:
    """The options of every entry point of ``role``, by name (``main`` first)."""
    specs = load_yaml(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]
    options: dict[str, Any] = {}
    for entry_point in sorted(specs, key=lambda name: name != "main"):
        for name, option in (specs[entry_point].get("options") or {}).items():
            if name in options:
                assert option.get("default") == options[name].get("default"), (
                    f"{role}: {name} has another default in entry point {entry_point}"
                )
            options.setdefault(name, option)
    return options


def role_defaults(role: str) -> dict[str, Any]:
    path = REPO / "roles" / role / "defaults" / "main.yml"
    return dict(load_yaml(path) or {}) if path.exists() else {}


def test_there_are_roles() -> None:
    assert "testbed" in ROLES


@pytest.mark.parametrize("role", ROLES)
def test_role_has_argument_specs_and_meta(role: str) -> None:
    assert (REPO / "roles" / role / "meta" / "argument_specs.yml").is_file()
    assert (REPO / "roles" / role / "meta" / "main.yml").is_file()


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_specified_with_the_same_value(role: str) -> None:
    options = entry_point_options(role)
    for name, value in role_defaults(role).items():
        assert name in options, f"{role}: default {name} is missing from meta/argument_specs.yml"
        assert options[name].get("default") == value, f"{role}: {name} default differs from argument_specs"


@pytest.mark.parametrize("role", ROLES)
def test_every_option_has_a_default_or_is_required(role: str) -> None:
    defaults = role_defaults(role)
    for name, option in entry_point_options(role).items():
        assert option.get("description"), f"{role}: option {name} has no description"
        assert name.startswith(f"{role}_"), f"{role}: option {name} lacks the role's prefix"
        assert name in defaults or option.get("required"), f"{role}: option {name} has no default"


def test_a_role_offering_the_control_plane_modes_offers_the_workers_own() -> None:
    """The mode names live in han_worker.selection.policy.MODES; a role's spec repeats them to refuse a typo
    before anything runs, and this holds the copy to the original."""
    offered = {
        (role, name): option.get("choices")
        for role in ROLES
        for name, option in entry_point_options(role).items()
        if name.endswith("_control_plane_mode")
    }
    assert offered, "no role offers a control-plane mode"
    assert all(choices == list(MODES) for choices in offered.values()), offered
