"""What a fresh machine does differently: CI in a new venv, read-only package and home folders.

* ``.ci/run`` runs the README's test command verbatim in a new virtual environment, so CI sees
  the newest releases pip resolves for a user (checked end to end on a tiny stand-in project).
* ``import xfusion`` works when numba can write its cache neither beside the source nor in the
  home folder (a read-only container, a batch job as ``nobody``), and the JAX compilation cache
  is not pointed at a folder it cannot write.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"


def _readme_test_command() -> str:
    """The README's "install the test extra, run the tests" command, without its comment."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if "python -m pytest" in line and "pip install" in line:
            return line.split("#", 1)[0].strip()
    raise AssertionError("README.md has no line with the test command")


def test_ci_runs_the_readme_test_command_verbatim():
    command = _readme_test_command()
    assert command == 'python -m pip install -e ".[test]" && python -m pytest'
    lines = CI.read_text().splitlines()
    run = [i for i, line in enumerate(lines) if line.startswith(command)]
    venv = [i for i, line in enumerate(lines) if "-m venv" in line]
    activate = [i for i, line in enumerate(lines) if re.match(r"source .*/bin/activate", line)]
    assert run and venv and activate, "expected a venv, its activation, then the README command"
    assert venv[0] < activate[0] < run[0]


@pytest.mark.parametrize(
    ("package", "broken"),
    [("zarr", "2.18.7"), ("xarray", "2024.10.0")],  # no zarr_format / misreads Zarr-Python 3
)
def test_dependency_floors_exclude_versions_known_to_break(package, broken):
    # a floor pip may pick (an old pin elsewhere in a user's environment) must work
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (req,) = [r for r in map(Requirement, project["dependencies"]) if r.name == package]
    assert broken not in req.specifier, f"{req} still allows {package} {broken}"


def _stub_project(root: Path) -> Path:
    """A one-test project with the repository's CI script and a ``test`` extra."""
    (root / ".ci").mkdir(parents=True)
    shutil.copy2(CI, root / ".ci" / "run")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["hatchling>=1.18"]
            build-backend = "hatchling.build"

            [project]
            name = "ci-probe"
            version = "0.0.1"
            requires-python = ">=3.11"

            [project.optional-dependencies]
            test = ["pytest>=8"]

            [tool.hatch.build.targets.wheel]
            packages = ["ci_probe"]
            """
        )
    )
    (root / "ci_probe").mkdir()
    (root / "ci_probe" / "__init__.py").write_text("")
    (root / "tests").mkdir()
    (root / "tests" / "test_probe.py").write_text(
        textwrap.dedent(
            """\
            import os, sys

            import ci_probe

            def test_where():
                with open(os.environ["CI_PROBE_OUT"], "w") as f:
                    f.write(sys.prefix + "\\n" + ci_probe.__file__)
            """
        )
    )
    return root / ".ci" / "run"


@pytest.mark.slow
def test_ci_installs_into_a_fresh_venv_and_logs_its_versions(tmp_path):
    # ~30 s: a venv, an isolated build of the stand-in project and pytest from the index
    script = _stub_project(tmp_path / "project")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chromium").write_text("#!/bin/sh\nexit 0\n")  # skip the apt-get step
    (bin_dir / "chromium").chmod(0o755)
    probe = tmp_path / "probe.txt"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
        "CI_PROBE_OUT": str(probe),
        "TMPDIR": str(tmp_path),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    prefix, module = probe.read_text().splitlines()
    # the tests ran in a new environment under TMPDIR, not in this interpreter's
    assert Path(prefix).resolve().is_relative_to(tmp_path.resolve()), prefix
    assert Path(prefix).resolve() != Path(sys.prefix).resolve()
    assert Path(module).resolve() == (tmp_path / "project" / "ci_probe" / "__init__.py").resolve()
    # the log has the environment's versions, and the venv is removed afterwards
    freeze = log.split("pip freeze of the fresh environment:", 1)[1]
    assert re.search(r"^pytest==\d", freeze, re.M) and "ci_probe" in freeze.replace("-", "_")
    assert not Path(prefix).exists()


def test_ci_fails_when_no_tests_ran(tmp_path):
    text = CI.read_text()
    assert "no tests ran|collected 0 items" in text and 'exit "$status"' in text


# --- read-only package and home folders ----------------------------------------------------------


def _read_only_copy(tmp_path: Path) -> Path:
    """A copy of the package where no ``__pycache__`` can be created (a file stands in the way).

    Making the folders read-only would not stop root, a file does: numba's in-tree cache locator
    cannot create its ``__pycache__`` folder whoever runs it.
    """
    site = tmp_path / "site"
    shutil.copytree(
        ROOT / "xfusion", site / "xfusion", ignore=shutil.ignore_patterns("__pycache__")
    )
    for folder in [site / "xfusion", *(p for p in (site / "xfusion").rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("not a folder\n")
    for path in (site / "xfusion").rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    return site


def _run_isolated(tmp_path: Path, code: str, **extra_env: str) -> subprocess.CompletedProcess:
    site = _read_only_copy(tmp_path)
    home = tmp_path / "home-is-a-file"
    home.write_text("")  # nothing can be created under HOME, not even by root
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "JAX_COMPILATION_CACHE_DIR"}
        and not k.startswith("XFUSION_")
    }
    env.update(
        PYTHONPATH=str(site),
        HOME=str(home),
        JAX_PLATFORMS="cpu",
        MPLCONFIGDIR=str(tmp_path / "mpl"),
        PYTHONDONTWRITEBYTECODE="1",
        **extra_env,
    )
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for path in (site / "xfusion").rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        (site / "xfusion").chmod(0o755)


KERNELS = """
import numpy as np
import xfusion
assert xfusion.__file__.startswith({site!r}), xfusion.__file__
from xfusion._kernels import aggregate, lbp, morphology
mask = np.zeros((1, 5, 5), bool); mask[0, 2, 2] = True
print(int(morphology.binary_dilate_disk(mask, 1).sum()))
print(aggregate.aggregate_blocks(np.arange(16.0).reshape(4, 4), (2, 2), "max").tolist())
print(lbp.lbp_uniform(np.arange(25.0).reshape(1, 5, 5), 8, 1).shape)
"""


def test_import_and_kernels_work_without_a_writable_cache_folder(tmp_path):
    # Before: RuntimeError: cannot cache function '_dilate_stack': no locator available
    done = _run_isolated(tmp_path, KERNELS.format(site=str(tmp_path / "site")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["5", "[[5.0, 7.0], [13.0, 15.0]]"], done.stdout
    assert "Warning" not in done.stderr, done.stderr[-3000:]


def test_numba_cache_is_used_where_it_can_be_written(tmp_path):
    # NUMBA_CACHE_DIR writable: the kernels are cached there (the fallback is only a fallback)
    cache = tmp_path / "numba-cache"
    done = _run_isolated(
        tmp_path, KERNELS.format(site=str(tmp_path / "site")), NUMBA_CACHE_DIR=str(cache)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(cache.rglob("*.nbi")), "numba wrote no cache index"


JAX_CACHE = """
import jax
from xfusion.models.predict import enable_compilation_cache
print(enable_compilation_cache())
print(jax.config.jax_compilation_cache_dir)
"""


@pytest.mark.parametrize("folder", [None, "/proc/self"])
def test_jax_cache_is_not_set_up_where_it_cannot_be_written(tmp_path, folder):
    # None: the default under a HOME that cannot hold folders; /proc/self: a folder that exists
    # (mkdir succeeds) but takes no files, where JAX would warn on every compilation
    extra = {"XFUSION_JAX_CACHE": folder} if folder else {}
    done = _run_isolated(tmp_path, JAX_CACHE, **extra)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["None", "None"], done.stdout
