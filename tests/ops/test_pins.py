"""The tested versions are the installed ones: constraints.txt pins every package of
``.[dev]``, `make` and the Dockerfile install with it, and this environment matches it.

If these fail after a dependency change, run `make constraints` (see the README).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)$")


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line.strip())
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        name = canonicalize_name(match["name"])
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = match["version"]
    return found


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [Requirement(spec) for spec in listed]


def installed_closure() -> set[str]:
    """Every distribution `.[dev]` needs, following installed metadata with markers."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = [(req, frozenset(req.extras)) for req in project_requirements()]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        names.add(name)
        for spec in metadata.requires(req.name) or []:
            dep = Requirement(spec)
            wanted = dep.marker is None or any(
                dep.marker.evaluate({"extra": extra}) for extra in ("", *extras)
            )
            if wanted:
                todo.append((dep, frozenset(dep.extras)))
    return names


def test_make_installs_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\):(?P<deps>.*)\n(?P<recipe>(?:\t.*\n)+)", makefile, re.M)
    assert stamp_rule, "no $(STAMP) rule in the Makefile"
    assert "constraints.txt" in stamp_rule["deps"].split(), "venv not rebuilt on a pin change"
    assert re.search(r"pip install .*-c constraints\.txt -e '\.\[dev\]'", stamp_rule["recipe"])


def test_the_image_installs_with_the_constraints() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copy = next(line for line in dockerfile.splitlines() if "COPY pyproject.toml" in line)
    assert "constraints.txt" in copy.split()
    assert re.search(r"pip install -c constraints\.txt '?\.(\[s3\])?'? ", dockerfile)
    assert "constraints.txt" not in (ROOT / ".dockerignore").read_text().split()


def test_every_package_of_dev_is_pinned_and_installed_at_its_pin() -> None:
    pinned = pins()
    needed = installed_closure()
    assert needed - pinned.keys() == set(), "installed by .[dev] but not pinned"
    wrong = {
        name: (metadata.version(name), pinned[name])
        for name in needed
        if metadata.version(name) != pinned[name]
    }
    assert wrong == {}, "installed != pinned (rebuild the venv: make venv)"


@pytest.mark.parametrize("name", ["celery", "kombu", "redis"])
def test_the_broker_stack_is_the_pinned_one(name: str) -> None:
    assert metadata.version(name) == pins()[name]


def test_pins_fit_pyproject_ranges() -> None:
    pinned = pins()
    for req in project_requirements():
        version = pinned[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req} vs {version}"


def test_celery_5_7_is_excluded() -> None:
    celery = next(r for r in project_requirements() if r.name == "celery")
    assert not celery.specifier.contains("5.7.0")
