"""A wheel and an editable install both provide sweeper.agents and sweeper.integrations,
and neither puts a bare ``agents`` or ``integrations`` package on the path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]

# Run with -S so the test environment's own (editable) install of sweeper is not visible:
# only the site directory under test is.
PROBE = """
import importlib.util, site, sys
site.addsitedir(sys.argv[1])
import sweeper
for name in ("agents", "integrations"):
    assert importlib.util.find_spec(name) is None, f"bare {name} is importable"
print(sweeper.__file__)
# Located, not executed: their dependencies are not on this bare path.
print(importlib.util.find_spec("sweeper.agents").origin)
print(importlib.util.find_spec("sweeper.integrations").origin)
"""


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        capture_output=True,
        text=True,
    )


def probe(site_dir: Path, cwd: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, str(site_dir)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def copy_project(into: Path) -> None:
    """The project's own files (git's list where it can tell), without builds or environments."""
    git = shutil.which("git")
    command = [git or "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(command, cwd=REPO, capture_output=True) if git else None
    if listed is None or listed.returncode != 0:  # not a git checkout: leave out what git would
        leftovers = shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", ".sweeper", "__pycache__", ".*_cache"
        )
        shutil.copytree(REPO, into, ignore=leftovers, symlinks=True)
        return
    for name in listed.stdout.decode().split("\0"):
        if name and (REPO / name).is_file():  # a file deleted but not yet staged is still listed
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, into / name)


def test_wheel_install(tmp_path: Path) -> None:
    # From a copy of the project's files alone: setuptools packs whatever an earlier build left in
    # build/, and a virtual environment in the folder would be copied too.
    source = tmp_path / "source"
    copy_project(source)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source))
    wheel = next((tmp_path / "dist").glob("sweeper-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sweeper/agents/__init__.py" in names and "sweeper/integrations/__init__.py" in names
    assert not [n for n in names if n.startswith(("agents/", "integrations/"))]
    # The metric capture that trial processes load from the agent's PYTHONPATH entry, all of it.
    capture = REPO / "agents" / "pythonpath"
    assert {f"sweeper/agents/pythonpath/{p.relative_to(capture)}" for p in capture.rglob("*.py")} <= {*names}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sweeper = sweeper.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    pip("install", "--no-deps", "--ignore-installed", "--target", str(target), str(wheel))
    sweeper_file, agents_file, integrations_file = probe(target, cwd=tmp_path)
    assert Path(sweeper_file) == target / "sweeper" / "__init__.py"
    assert Path(agents_file) == target / "sweeper" / "agents" / "__init__.py"
    assert Path(integrations_file) == target / "sweeper" / "integrations" / "__init__.py"


def test_editable_install(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    pip(
        "install",
        "--no-deps",
        "--ignore-installed",
        "--no-build-isolation",
        "--prefix",
        str(prefix),
        "-e",
        str(REPO),
    )
    site_dir = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    sweeper_file, agents_file, integrations_file = probe(site_dir, cwd=tmp_path)
    assert Path(sweeper_file) == REPO / "sweeper" / "__init__.py"
    assert Path(agents_file) == REPO / "agents" / "__init__.py"
    assert Path(integrations_file) == REPO / "integrations" / "__init__.py"
