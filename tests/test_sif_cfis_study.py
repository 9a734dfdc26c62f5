"""The sif_cfis_train study (benchmarks/bench_sif_cfis.py) on the real tiles: its data and its
baselines. Its tiny mode (1 fold, 1 seed, 1 epoch) runs in tests/test_benchmarks.py. Skipped
where ../shared/data is absent."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import bench_sif_cfis as study


@pytest.fixture(scope="module")
def tiles():
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "sif_cfis_train"
    if not (root / "tiles_index.csv").exists():
        pytest.skip(f"real SIF tiles not found at {root} (they sit beside the project in CI)")
    return study.load_tiles(root)


def test_tiles_and_coarse_labels_are_footprint_means(tiles):
    assert tiles["X"].shape == (56, 24, 100, 100)
    assert np.bincount(tiles["fold"]).tolist() == [14, 28, 14]
    fine = tiles["fine"]
    means = np.array([f[np.isfinite(f)].mean() for f in fine])
    np.testing.assert_allclose(means, tiles["coarse"], rtol=1e-5)


def test_mean_correction_restores_every_footprint_mean(tiles):
    fine, coarse = tiles["fine"][:5], tiles["coarse"][:5]
    fp = np.isfinite(fine)
    pred = np.random.default_rng(0).normal(size=fine.shape)
    out = study.mean_correct(pred, fp, coarse)
    np.testing.assert_allclose([o[m].mean() for o, m in zip(out, fp, strict=True)], coarse)
    # within a tile the pattern is unchanged
    np.testing.assert_allclose(out[0] - out[0, 0, 0], pred[0] - pred[0, 0, 0], atol=1e-12)


def test_coarse_trained_ridge_on_fold_0(tiles):
    """The ridge is deterministic: its held-out pixel R² on fold 0 is a fixed number."""
    X, fine, coarse, fold = tiles["X"], tiles["fine"], tiles["coarse"], tiles["fold"]
    fp = np.isfinite(fine)
    tr, te = fold != 0, fold == 0
    ridge, norm = study.fit_coarse_ridge(X[tr], fp[tr], coarse[tr], tiles["bands"])
    assert norm["alpha"] == 100.0
    pred = study.mean_correct(study.predict_ridge(ridge, norm, X[te]), fp[te], coarse[te])
    got = study.scores(pred, fine[te])
    flat = study.scores(np.broadcast_to(coarse[te][:, None, None], fine[te].shape), fine[te])
    assert got["n"] == flat["n"] == int(fp[te].sum())
    assert got["r2"] == pytest.approx(0.4245, abs=2e-3)
    assert flat["r2"] == pytest.approx(0.3900, abs=2e-3)


def test_the_unet_sees_the_bands_that_vary_inside_tiles(tiles):
    """The NLDAS weather is constant inside a tile: the U-Net's inputs leave it out."""
    fold = tiles["fold"]
    for k in (0, 1, 2):
        keep = study.unet_bands(tiles["X"][fold != k], tiles["bands"])
        dropped = {b for i, b in enumerate(tiles["bands"]) if i not in keep}
        assert dropped == {"Rainf_f_tavg", "SWdown_f_tavg", "Tair_f_tavg"}, (k, dropped)
    assert study.unet_bands(tiles["X"], tiles["bands"], "all") == list(range(24))


def _part(fold, settings, r2s, ridge_rmse):
    rows = [
        {
            "fold": fold,
            "seed": s,
            "unet": {"r2": r2, "rmse": 1 - r2},
            "unet_raw": {"r2": r2 / 2, "rmse": 1 - r2 / 2},
            "beats_ridge": 1 - r2 < ridge_rmse,
            "beats_coarse": True,
        }
        for s, r2 in enumerate(r2s)
    ]
    ridge = {"r2": 1 - ridge_rmse, "rmse": ridge_rmse}
    return {
        "params": {"folds": [fold], "unet": settings, "total_s": 10.0},
        "per_fold_seed": rows,
        "baselines": {str(fold): {"coarse": ridge, "ridge": ridge}},
        "timing": {"unet_fit_s": [2.0] * len(r2s), "ridge_fit_s": [1.0]},
        "commit_at_start": ["abc"],
        "xfusion": {"median_s": 2.0, "times_s": []},
        "competitors": {"ridge": {"median_s": 1.0, "times_s": []}},
    }


def test_per_fold_results_merge_with_their_own_settings():
    a = _part(0, {"n_members": 5, "linear_skip": True}, [0.5, 0.4, 0.3], ridge_rmse=0.65)
    b = _part(2, {"n_members": 5, "linear_skip": False}, [0.2, 0.3], ridge_rmse=0.9)
    out = study.merge([a, b])
    assert out["params"]["folds"] == [0, 2]
    assert out["params"]["unet"] == {"n_members": 5}  # what both folds share
    assert out["params"]["unet_per_fold"]["0"]["linear_skip"] is True
    assert out["params"]["unet_per_fold"]["2"]["linear_skip"] is False
    summary = out["summary"]
    assert summary["0"]["beats_ridge"] == "2/3" and summary["2"]["beats_ridge"] == "2/2"
    assert summary["0"]["unet_r2_mean"] == pytest.approx(0.4)
    assert summary["0"]["unet_r2_sd"] == pytest.approx(0.1)
    assert summary["beats_ridge_every_fold_and_seed"] is False
    assert out["params"]["total_s"] == 20.0 and len(out["xfusion"]["times_s"]) == 5
    with pytest.raises(ValueError, match="more than one part"):
        study.merge([a, a])


def test_settings_from_the_command_line_and_nested_choices():
    assert study.parse_settings(["linear_skip=false", "epochs=3"]) == {
        "linear_skip": False,
        "epochs": 3,
    }
    with pytest.raises(SystemExit, match="KEY=JSON"):
        study.parse_settings(["no_such_setting=1"])
    # every fold has a nested-CV choice, and only of settings the study knows
    assert set(study.NESTED) == {0, 1, 2}
    assert all(set(v) <= set(study.UNET) for v in study.NESTED.values())
