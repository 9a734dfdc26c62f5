"""No pickle in any save/load path: a static scan of the package and a round trip without it."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest

import xfusion
from xfusion.models import KernelRidge, Ridge, UNetRegressor, UNetSegmenter, load_model

PACKAGE = Path(xfusion.__file__).parent
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}
# (module alias or object, attribute) calls that unpickle
FORBIDDEN_CALLS = {
    ("torch", "load"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("np", "load"),  # only with allow_pickle=True, checked below
    ("numpy", "load"),
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def pickle_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every import of a pickling module and every unpickling call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [
                f"{where} import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            names = {a.name for a in node.names}
            if module in FORBIDDEN_MODULES or names & (FORBIDDEN_MODULES | {"read_pickle"}):
                found.append(f"{where} from {node.module} import {sorted(names)}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func) or ""
            parts = tuple(name.rsplit(".", 1)) if "." in name else ("", name)
            pickled = any(
                k.arg == "allow_pickle"
                and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in node.keywords
            )
            if parts in FORBIDDEN_CALLS - {("np", "load"), ("numpy", "load")}:
                found.append(f"{where} {name}()")
            elif parts[1] in {"read_pickle", "to_pickle"}:
                found.append(f"{where} {name}()")
            elif pickled:
                found.append(f"{where} {name}(allow_pickle=...)")
            elif parts[1] in {"__import__", "import_module"} and any(
                isinstance(a, ast.Constant) and str(a.value).split(".")[0] in FORBIDDEN_MODULES
                for a in node.args
            ):
                found.append(f"{where} {name}({node.args[0].value!r})")
    return found


def test_the_scan_finds_every_kind_of_pickle_use():
    bad = """
import pickle
import cloudpickle as cp, os
from joblib import dump
from dill import loads
import shelve
from pandas import read_pickle
x = np.load("a.npy", allow_pickle=True)
y = numpy.load(f, allow_pickle=flag)
m = torch.load("m.pt")
t = pd.read_pickle("t.pkl")
df.to_pickle("t.pkl")
importlib.import_module("pickle")
__import__("_pickle")
ok = np.load("a.npy")
ok = np.load("a.npy", allow_pickle=False)
"""
    found = pickle_uses(bad)
    assert [f.split(" ", 1)[0] for f in found] == [f"<source>:{n}" for n in range(2, 15)]


def test_no_module_of_the_package_uses_pickle():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40 and any(f.name == "persist.py" for f in files)
    found = [use for f in files for use in pickle_uses(f.read_text(), str(f))]
    assert found == []


# ----------------------------------------------------------------------------------------------
# Dynamic: every model kind saves and loads with the standard library's pickle disabled
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 2, 16, 16)).astype(np.float32)
    # the architecture and batch shape of the other model tests: the jitted steps are shared
    small = {"widths": (4, 8), "center": 8, "batch_size": 8, "progress": False, "augment": False}
    small["epochs"] = 1
    rows = rng.normal(size=(60, 2))
    target = rows @ np.array([1.0, -1.0]) + 0.5
    fitted = {
        "unet_regressor": UNetRegressor(**small).fit(X, X[:, :1] - X[:, 1:]),
        "unet_segmenter": UNetSegmenter(**small).fit(X, (X[:, :1] > 0).astype("f4")),
        "ridge": Ridge(alpha=0.1).fit(rows, target),
        "kernel_ridge_nystroem": KernelRidge(gamma=0.5, n_components=20, random_state=0).fit(
            rows, target
        ),
        "kernel_ridge_rff": KernelRidge(
            gamma=0.5, n_components=20, method="rff", random_state=0
        ).fit(rows, target),
    }
    return fitted, X, rows


class PickleUsed(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise PickleUsed("pickle was used")


class _RefusingPickler:
    """Stands in for Pickler/Unpickler: libraries may subclass it on import; using it fails."""

    def __init__(self, *args, **kwargs):
        _refuse()


@pytest.fixture
def no_pickle(monkeypatch):
    import _pickle

    for module in (pickle, _pickle):
        for name in ("load", "loads", "dump", "dumps"):
            monkeypatch.setattr(module, name, _refuse)
        for name in ("Unpickler", "Pickler"):
            monkeypatch.setattr(module, name, _RefusingPickler)
    # the replacements are in place
    with pytest.raises(PickleUsed):
        pickle.loads(b"\x80\x04N.")
    with pytest.raises(PickleUsed):
        pickle.Unpickler(None)


@pytest.mark.parametrize("fmt", [None, "msgpack"])
def test_every_model_kind_round_trips_with_pickle_disabled(models, tmp_path, no_pickle, fmt):
    fitted, X, rows = models
    for name, model in fitted.items():
        kwargs = {} if fmt is None or name.startswith("unet") else {"fmt": fmt}
        path = model.save(tmp_path / name, **kwargs)
        loaded = load_model(path)
        assert type(loaded) is type(model), name
        data = X if name.startswith("unet") else rows
        np.testing.assert_array_equal(loaded.predict(data), model.predict(data), err_msg=name)
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))
