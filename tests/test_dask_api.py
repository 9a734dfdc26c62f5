"""The Dask API xfusion's graphs are written against: public names only, on a current Dask.

``xfusion._graph`` builds the sparse grid-change graphs and the Zarr writer's shared graph in
Dask's task spec. It takes the classes from ``dask.task_spec`` and ``convert_legacy_graph``
from ``dask.core``, falling back to the private ``dask._task_spec`` only on a Dask older than
2025.5. CI installs the newest Dask: if it stops offering these names publicly, these tests
fail here, by name, instead of the graphs breaking somewhere inside a computation.
"""

from __future__ import annotations

import importlib

import dask
import dask.core
import numpy as np
import pytest
from packaging.version import Version

from xfusion import _graph

PUBLIC = ("Alias", "DataNode", "GraphNode", "Task", "TaskRef")


def test_the_task_spec_comes_from_dasks_public_module():
    if Version(dask.__version__) < Version("2025.5"):
        pytest.skip(f"dask {dask.__version__} predates the public dask.task_spec.Alias")
    task_spec = importlib.import_module("dask.task_spec")
    missing = [name for name in PUBLIC if not hasattr(task_spec, name)]
    assert not missing, f"dask {dask.__version__}: dask.task_spec no longer has {missing}"
    assert _graph.PUBLIC_TASK_SPEC
    for name in PUBLIC:
        assert getattr(_graph, name) is getattr(task_spec, name), name
    assert _graph.convert_legacy_graph is dask.core.convert_legacy_graph


def test_xfusion_imports_no_private_dask_module_outside_the_fallback():
    import ast
    import pathlib

    root = pathlib.Path(_graph.__file__).parent
    private = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dask._"):
                in_fallback = path.name == "_graph.py" and node.module == "dask._task_spec"
                if not in_fallback:
                    private.append(f"{path.relative_to(root)}:{node.lineno} {node.module}")
    assert not private, f"private dask imports: {private}"


def test_the_names_build_and_run_a_graph():
    # the three node kinds the sparse layers use, and a legacy graph converted: one compute
    fill = _graph.Task(("f", 2), np.full, (2,), np.nan, np.float64)
    data = _graph.DataNode(("d", 0), np.arange(2.0))
    alias = _graph.Alias(("a", 0), ("d", 0))
    total = _graph.Task(("t", 0), np.add, _graph.TaskRef(("a", 0)), _graph.TaskRef(("f", 2)))
    legacy = _graph.convert_legacy_graph({("l", 0): (np.sum, ("d", 0))}, all_keys={("d", 0)})
    graph = {n.key: n for n in (fill, data, alias, total)} | legacy
    got_total, got_sum = dask.get(graph, [("t", 0), ("l", 0)])
    assert np.isnan(got_total).all() and got_sum == 1.0
    assert all(isinstance(node, _graph.GraphNode) for node in graph.values())
