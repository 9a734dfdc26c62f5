"""Every shell command and Python block of README.md runs as written.

The blocks run in file order in one workspace: a copy of the repository (its tracked and
unignored files, as a user's clone has them) with a throwaway virtual environment made with
``--system-site-packages``, first on ``PATH``. ``python -m pip install .`` style commands install
into that environment only, with ``--no-deps`` and offline (``PIP_NO_DEPS``, ``PIP_NO_INDEX``;
without build isolation where hatchling and editables are importable), so they are cheap and
never touch the environment running the tests.

A block is skipped only when the line right before it is ``<!-- readme-test: skip (reason) -->``
with one of the reasons in ``SKIP_REASONS`` (Earth Engine credentials, a remote Dask scheduler,
the command that runs this test); ``<!-- readme-test: slow -->`` marks a long block ``slow``
(it still runs in CI, which selects no markers).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: The only reasons a README block may be skipped for.
SKIP_REASONS = {
    "needs Earth Engine",
    "needs a remote Dask scheduler",
    "this is the command that runs this test",
}

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
_MARK = re.compile(r"<!--\s*readme-test:\s*(?P<what>skip|slow)\s*(?:\((?P<why>[^)]*)\))?\s*-->")
_LANGS = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python", "py": "python"}


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README: where it starts, its kind, its text and its mark."""

    line: int
    kind: str
    code: str
    mark: str | None = None
    reason: str | None = None


def readme_blocks(text: str) -> list[Block]:
    """Return the shell and Python blocks of ``text`` with the ``readme-test`` mark before each."""
    blocks = []
    for match in _FENCE.finditer(text):
        kind = _LANGS.get(match["lang"])
        if kind is None:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mark = _MARK.fullmatch(before)
        blocks.append(
            Block(
                line=text.count("\n", 0, match.start()) + 1,
                kind=kind,
                code=match["body"],
                mark=mark["what"] if mark else None,
                reason=(mark["why"] or "").strip() or None if mark else None,
            )
        )
    return blocks


def _params() -> list:
    params = []
    for block in readme_blocks(README.read_text(encoding="utf-8")):
        marks = []
        if block.mark == "skip":
            marks.append(pytest.mark.skip(reason=block.reason or "no reason given"))
        elif block.mark == "slow":
            marks.append(pytest.mark.slow)
        # a slow block's id ends in "-slow": tests/conftest.py's scheduler runs it as a unit of
        # its own (in a workspace of its own: a fresh folder, as a user starts) beside the rest
        suffix = "-slow" if block.mark == "slow" else ""
        params.append(pytest.param(block, id=f"line{block.line}-{block.kind}{suffix}", marks=marks))
    return params


def _copy_checkout(dest: Path) -> None:
    """Copy the repository's tracked and unignored files (a clone's content) to ``dest``."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy what is there
        shutil.copytree(
            ROOT, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", "xfusion-out")
        )
        return
    for name in listed.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the repository and the environment the README's commands run with."""
    base = tmp_path_factory.mktemp("readme")
    repo = base / "xfusion"
    _copy_checkout(repo)
    env_dir = base / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False, symlinks=os.name != "nt")
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=str(bin_dir) + os.pathsep + env.get("PATH", ""),
        VIRTUAL_ENV=str(env_dir),
        PIP_NO_DEPS="1",
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_WARN_SCRIPT_LOCATION="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
    )
    if all(importlib.util.find_spec(m) is not None for m in ("hatchling", "editables")):
        env["PIP_NO_BUILD_ISOLATION"] = "0"  # pip reads "0" here as: no build isolation
    return repo, env


def test_readme_marks_are_known_and_blocks_are_found():
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    kinds = [b.kind for b in blocks]
    assert kinds.count("python") >= 2 and kinds.count("shell") >= 3
    reasons = {b.reason for b in blocks if b.mark == "skip"}
    assert reasons <= SKIP_REASONS, f"README skips blocks for other reasons: {reasons}"
    # the quick start's install-and-demo line and the tour run; only marked blocks are skipped
    running = [b.code for b in blocks if b.mark != "skip"]
    assert any("python -m pip install . && xfusion demo" in c for c in running)
    assert any("xf.datasets.synthetic_scene" in c and "xf.open_zarr" in c for c in running)
    assert any("xfusion demo --all" in c for c in running)


def test_readme_blocks_parse_marks():
    text = (
        "intro\n\n```bash\necho one\n```\n\n"
        "<!-- readme-test: skip (needs Earth Engine) -->\n```python\nimport ee\n```\n"
        "<!-- readme-test: slow -->\n```sh\nsleep 1\n```\n```text\nnot code\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.line, b.kind, b.mark, b.reason) for b in blocks] == [
        (3, "shell", None, None),
        (8, "python", "skip", "needs Earth Engine"),
        (12, "shell", "slow", None),
    ]
    assert blocks[1].code == "import ee\n"


@pytest.mark.parametrize("block", _params())
def test_readme_block_runs_as_written(block: Block, workspace):
    repo, env = workspace
    if block.kind == "python":
        # the script lives beside the copy, not in it (`ruff check .` in the README lints the copy)
        script = repo.parent / "blocks" / f"readme_line{block.line}.py"
        script.parent.mkdir(exist_ok=True)
        script.write_text(block.code, encoding="utf-8")
        argv = ["python", str(script)]
    else:
        argv = ["bash", "-euxo", "pipefail", "-c", block.code]  # -x: each command on stderr
    try:
        done = subprocess.run(
            argv,
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=900 if block.mark == "slow" else 420,
            executable=shutil.which(argv[0], path=env["PATH"]),
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"README.md line {block.line} did not finish in {err.timeout} s")
    assert done.returncode == 0, (
        f"README.md line {block.line} failed with exit code {done.returncode}:\n"
        f"{block.code}\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n"
        f"{_without_progress(done.stderr)[-6000:]}"
    )


def _without_progress(text: str) -> str:
    """``text`` without progress-bar lines (tqdm and Dask redraw with carriage returns)."""
    lines = (line.rsplit("\r", 1)[-1] for line in text.splitlines())
    return "\n".join(
        line for line in lines if not re.search(r"\d+%\|| Completed \|", line) and line.strip()
    )
