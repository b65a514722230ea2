"""config/retryd.example.toml loads, and documents every setting the code has."""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import BaseModel

from retryd.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "retryd.example.toml"

# A table that is absent by default ([[accounts]]) is shown commented out too.
_HEADER = re.compile(r"^(?:#\s*)?\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?\s*$")
_KEY = re.compile(r"^([A-Za-z0-9_]+)\s*=")
# TOML has no null: a field that is unset by default is shown commented out.
_UNSET_KEY = re.compile(r"^#\s*([A-Za-z0-9_]+)\s*=.*default: unset")


@dataclass
class Section:
    """One table of the example file: its keys, each with the comments that document it."""

    docs: dict[str, str] = field(default_factory=dict)


def _sections(text: str) -> dict[str, Section]:
    """Map table name -> keys; a key's doc is its own line plus the comment lines just above."""
    sections: dict[str, Section] = {"": Section()}
    current = sections[""]
    pending: list[str] = []
    for line in text.splitlines():
        if header := _HEADER.match(line):
            current = sections.setdefault(header.group(1), Section())
            pending = []
        elif unset := _UNSET_KEY.match(line):
            current.docs[unset.group(1)] = "\n".join([*pending, line])
            pending = []
        elif line.startswith("#"):
            pending.append(line)
        elif key := _KEY.match(line):
            current.docs[key.group(1)] = "\n".join([*pending, line])
            pending = []
        elif not line.strip():
            pending = []
    return sections


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The settings group behind a field: a model itself, or the item of a list of models."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return _model_of(item)
    return None


def _groups(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel]]:
    """Every settings group, keyed by its dotted TOML table name, found recursively."""
    found: dict[str, type[BaseModel]] = {}
    for name, info in model.model_fields.items():
        group = _model_of(info.annotation)
        if group is not None:
            table = f"{prefix}{name}"
            found[table] = group
            found.update(_groups(group, f"{table}."))
    return found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """RETRYD_* variables from the developer's shell must not change what the file says."""
    for name in list(os.environ):
        if name.startswith("RETRYD_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_example_loads_with_its_documented_values() -> None:
    """The example is a valid config: discovery, guards, a route and the HTTP port as written."""
    settings = load_settings(EXAMPLE)
    assert settings.discovery.queue_prefixes == ["retry-"]
    assert settings.schedule.interval_s == 60
    assert settings.guards.max_attempts == 5
    assert settings.guards.allow_any_target is False
    assert settings.parking.queue == "retryd-parking"
    assert settings.http.port == 9464
    assert settings.shutdown.drain_timeout_s == 20
    [route] = settings.routes
    assert route.queue == "retry-orders"
    assert route.target.startswith("arn:aws:lambda:")


@pytest.mark.usefixtures("clean_env")
def test_example_parking_queue_is_outside_the_discovery_prefixes() -> None:
    """Copying the example must not make retryd find its own parking queue by prefix."""
    settings = load_settings(EXAMPLE)
    prefixes = tuple(settings.discovery.queue_prefixes)
    assert not settings.parking.queue.startswith(prefixes)
    assert all(route.queue.startswith(prefixes) for route in settings.routes)


def test_every_settings_group_and_field_is_in_the_example() -> None:
    """Each group is a table of the example and each field a key in it: the file keeps up."""
    sections = _sections(EXAMPLE.read_text())
    groups = _groups(Settings)
    assert groups, "Settings has no groups: the walk is broken"
    missing = [
        f"{table}.{name}"
        for table, group in groups.items()
        for name in group.model_fields
        # A nested group is a table of its own ([[backoff.targets]]), checked as one.
        if name not in sections.get(table, Section()).docs and f"{table}.{name}" not in groups
    ]
    assert missing == [], f"not documented in {EXAMPLE.name}: {missing}"
    top_level = [name for name in Settings.model_fields if name not in groups]
    assert [name for name in top_level if name not in sections[""].docs] == []


def test_every_example_key_is_commented() -> None:
    """Each key carries a comment on its line or directly above it."""
    sections = _sections(EXAMPLE.read_text())
    bare = [
        f"{table}.{key}"
        for table, section in sections.items()
        for key, doc in section.docs.items()
        if "#" not in doc
    ]
    assert bare == []


@pytest.mark.usefixtures("clean_env")
def test_values_other_than_the_default_say_so() -> None:
    """A key set to something other than the code's default names the default in its comment."""
    settings = load_settings(EXAMPLE)
    sections = _sections(EXAMPLE.read_text())
    undocumented: list[str] = []
    for table, group in _groups(Settings).items():
        values: object = settings
        for part in table.split("."):
            values = getattr(values, part)
        if isinstance(values, list):
            continue  # array tables (routes) hold examples, and their fields have no default
        for name, info in group.model_fields.items():
            if info.is_required():
                continue
            default = info.get_default(call_default_factory=True)
            if (table, name) == ("ledger", "path"):
                # Loading takes a relative SQLite path from the settings file's folder.
                default = str(EXAMPLE.parent / default)
            # A key missing from the file is the field-coverage test's finding, not this one's.
            doc = sections[table].docs.get(name, "default:")
            if getattr(values, name) != default and "default:" not in doc:
                undocumented.append(f"{table}.{name}")
    assert undocumented == []
