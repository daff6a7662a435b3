"""The predictor's learned residual, on a synthetic table (no conversion, no timing): it is kept only when a
cross-validation on the calibration models says it pays, and a network it cannot describe gets the ridge alone."""

from __future__ import annotations

import numpy as np
import pytest

from latency.predictor import (RESIDUAL_GAIN, RESIDUAL_MIN, Calibration, Predictor, arch_shape, error_figures, features,
                               layer_costs, residual_pays)
from search_spaces import SearchSpace
from search_spaces.layers import network_layers

SHAPE = {"resolution": 224, "channels": 3, "num_classes": 1000}
TABLE = {"table_key": "synthetic", "device": "synthetic", **SHAPE}


def _layer_ms(spec) -> float:
    """A made-up but shape-driven layer time: what the layer moves, plus a fixed per-invoke cost."""
    cost = layer_costs(spec)
    return 0.02 + 4e-7 * cost["acts"] + 2e-7 * cost["weights"]


def _world(n: int, *, effect: bool, seed: int) -> tuple[dict, list[dict]]:
    """Layer times for ``n`` random networks of the default space and their "measured" latencies: 1.05 x the layer
    sum plus 0.3 ms, 1% noise, and with ``effect`` 15% more when the fourth block has 4 or more layers (a choice at
    one position, which the ridge's network-wide sums cannot single out)."""
    archs = SearchSpace.default().sample(n, seed=seed)
    rng = np.random.default_rng(seed)
    layers, rows = {}, []
    for arch in archs:
        specs = network_layers(arch, **SHAPE)
        total = 0.0
        for spec in specs:
            layers[spec.key] = _layer_ms(spec)
            total += layers[spec.key]
        y = (1.05 * total + 0.3) * (1 + 0.01 * rng.standard_normal())
        if effect and arch_shape(arch)[3 * 7] >= 4:
            y *= 1.15
        rows.append({"arch": arch, "latency_ms": float(y)})
    return layers, rows


def _predictor(layers, calibration, validation, residual=True) -> Predictor:
    return Predictor(table=TABLE, layers=layers, calibration_rows=calibration, validation_rows=validation,
                     space="mnasnet", runner="host", build_command="python -m latency table build",
                     residual=residual)


def test_residual_is_kept_when_it_pays_and_lowers_the_held_out_error():
    layers, rows = _world(RESIDUAL_MIN + 100, effect=True, seed=3)
    calibration, validation = rows[:RESIDUAL_MIN], rows[RESIDUAL_MIN:]
    with_residual = _predictor(layers, calibration, validation)
    ridge = _predictor(layers, calibration, validation, residual=False)

    assert with_residual.model_name == "ridge + residual" and ridge.model_name == "ridge"
    cv = with_residual.stated_error["residual_cv"]
    assert cv["pays"] and cv["residual_rmse_rel"] < 0.7 * cv["ridge_rmse_rel"]
    assert with_residual.stated_error["model"] == "ridge + residual"
    assert "residual_cv" not in ridge.stated_error  # not tried: nothing to state
    assert with_residual.stated_error["rmse_rel"] < 0.7 * ridge.stated_error["rmse_rel"]
    assert with_residual.stated_error["within_5"] > ridge.stated_error["within_5"]

    result = with_residual.predict(validation[0]["arch"])
    assert result.ok and result.extra["residual"] and result.extra["stated_error"]["model"] == "ridge + residual"
    assert "ridge + residual, 150 calibration models" in with_residual.describe_error()


def test_residual_is_dropped_when_the_ridge_already_explains_the_latency():
    layers, rows = _world(RESIDUAL_MIN + 50, effect=False, seed=4)
    predictor = _predictor(layers, rows[:RESIDUAL_MIN], rows[RESIDUAL_MIN:])
    cv = predictor.stated_error["residual_cv"]
    assert not cv["pays"] and cv["residual_rmse_rel"] > RESIDUAL_GAIN * cv["ridge_rmse_rel"]
    assert predictor.model_name == "ridge" and predictor.residual is None
    assert predictor.predict(rows[-1]["arch"]).extra["residual"] is False


def test_too_few_calibration_models_never_try_the_residual():
    layers, rows = _world(RESIDUAL_MIN - 1, effect=True, seed=5)
    predictor = _predictor(layers, rows, [])
    assert predictor.model_name == "ridge" and "residual_cv" not in predictor.stated_error


def test_a_network_with_another_block_count_gets_the_ridge_alone():
    layers, rows = _world(RESIDUAL_MIN, effect=True, seed=3)
    predictor = _predictor(layers, rows, [])
    assert predictor.residual is not None
    short = "-".join(rows[0]["arch"].split("-")[:5])  # five blocks: the residual was fitted on seven
    for spec in network_layers(short, **SHAPE):
        layers.setdefault(spec.key, _layer_ms(spec))
    result = predictor.predict(short)
    assert result.ok and result.extra["residual"] is False
    specs = network_layers(short, **SHAPE)
    ridge = predictor.calibration.predict([features(specs, [layers[s.key] for s in specs])])[0]
    assert result.latency_ms == pytest.approx(ridge)


def test_residual_pays_compares_both_on_the_same_folds():
    layers, rows = _world(60, effect=True, seed=6)
    feats, shapes = [], []
    for r in rows:
        specs = network_layers(r["arch"], **SHAPE)
        feats.append(features(specs, [layers[s.key] for s in specs]))
        shapes.append(arch_shape(r["arch"]))
    y = np.array([r["latency_ms"] for r in rows])
    cv = residual_pays(feats, shapes, y, folds=5)
    assert cv["folds"] == 5 and cv["pays"] == (cv["residual_rmse_rel"] <= RESIDUAL_GAIN * cv["ridge_rmse_rel"])
    # the ridge figure is the plain 5-fold error of Calibration on the same folds
    plain = np.zeros(len(y))
    for fold in np.array_split(np.random.default_rng(0).permutation(len(y)), 5):
        train = np.setdiff1d(np.arange(len(y)), fold)
        plain[fold] = Calibration().fit([feats[i] for i in train], y[train]).predict([feats[i] for i in fold])
    assert cv["ridge_rmse_rel"] == pytest.approx(error_figures(plain, y)["rmse_rel"])


def _never_cross_validate(*args, **kwargs):
    raise AssertionError("the residual's cross-validation ran again")


def test_a_stored_residual_decision_is_reused_only_for_the_same_calibration_set(monkeypatch):
    import latency.predictor as predictor_module

    layers, rows = _world(RESIDUAL_MIN + 20, effect=True, seed=7)
    calibration, validation = rows[:RESIDUAL_MIN], rows[RESIDUAL_MIN:]
    first = _predictor(layers, calibration, validation)
    assert first.residual_cv_new and first.residual_cv["fingerprint"] and first.residual is not None
    assert "fingerprint" not in first.stated_error["residual_cv"]

    with monkeypatch.context() as m:
        m.setattr(predictor_module, "residual_pays", _never_cross_validate)
        again = Predictor(table=TABLE, layers=layers, calibration_rows=calibration, validation_rows=validation,
                          space="mnasnet", runner="host", build_command="b", residual_decision=first.residual_cv)
    assert not again.residual_cv_new and again.model_name == "ridge + residual"
    assert again.stated_error == first.stated_error
    assert again.predict(validation[0]["arch"]).latency_ms == first.predict(validation[0]["arch"]).latency_ms

    # one calibration latency changed (a retimed model, an imported table rescaled): the decision is made again
    changed = [dict(calibration[0], latency_ms=calibration[0]["latency_ms"] * 1.01)] + calibration[1:]
    redone = Predictor(table=TABLE, layers=layers, calibration_rows=changed, validation_rows=validation,
                       space="mnasnet", runner="host", build_command="b", residual_decision=first.residual_cv)
    assert redone.residual_cv_new and redone.residual_cv["fingerprint"] != first.residual_cv["fingerprint"]


def test_the_residual_decision_is_stored_with_the_table_and_reused_by_the_next_load(tmp_path, monkeypatch):
    import latency.predictor as predictor_module
    from types import SimpleNamespace

    from latency.cache import LatencyCache, LatencyCacheError

    layers, rows = _world(RESIDUAL_MIN + 10, effect=False, seed=8)
    cache = LatencyCache(tmp_path / "latency.sqlite")
    identity = {"device": "synthetic", "settings": {"runner": "host"}, "versions": {}, **SHAPE}
    cache.put_table("synthetic-key", identity, {"validation": {"mnasnet": {"n": 10}}})
    specs = {s.key: s for r in rows for s in network_layers(r["arch"], **SHAPE)}
    for key, ms in layers.items():
        cache.put_layer("synthetic-key", key, specs[key].to_dict(), {"status": "ok", "latency_ms": ms})
    for i, r in enumerate(rows):
        cache.put_model("synthetic-key", "calibration" if i < RESIDUAL_MIN else "validation", "mnasnet", r["arch"],
                        r["latency_ms"], {"status": "ok"})
    service = SimpleNamespace(cache=cache, runner_config={"runner": "host"}, anchor=None, pin_cpu=False,
                              gate=SimpleNamespace(mode="quiet"), cache_path=tmp_path / "latency.sqlite")
    first = Predictor.from_service(service, **SHAPE, table="synthetic")
    assert first.residual_cv_new
    meta = cache.tables("synthetic-key")[0]["meta"]
    assert meta["residual_cv"]["mnasnet"] == first.residual_cv
    assert meta["validation"] == {"mnasnet": {"n": 10}}  # the other entries are untouched
    with pytest.raises(ValueError, match="at least one key"):
        cache.set_table_meta("synthetic-key", (), 1)
    # a held-out set's Kendall tau can be NaN (3 models, ties): stored as the rest of the metadata is (CI saw SQLite's
    # own JSON functions refuse it, "malformed JSON", failing table validate)
    cache.set_table_meta("synthetic-key", ("validation", 'odd "space".name'), {"kendall_tau": float("nan")})
    stored = cache.tables("synthetic-key")[0]["meta"]["validation"]
    assert np.isnan(stored['odd "space".name']["kendall_tau"]) and stored["mnasnet"] == {"n": 10}

    monkeypatch.setattr(predictor_module, "residual_pays", _never_cross_validate)
    second = Predictor.from_service(service, **SHAPE, table="synthetic")
    assert not second.residual_cv_new and second.stated_error == first.stated_error

    # a cache this process cannot write (a shared table, read-only): the decision is made again, not stored
    monkeypatch.undo()
    cache.set_table_meta("synthetic-key", ("residual_cv",), {})

    def read_only(*args, **kwargs):
        raise LatencyCacheError("cannot write latency cache: attempt to write a readonly database")

    monkeypatch.setattr(cache, "set_table_meta", read_only)
    third = Predictor.from_service(service, **SHAPE, table="synthetic")
    assert third.residual_cv_new and third.stated_error == first.stated_error
    cache.close()


def test_a_failed_metadata_write_leaves_no_transaction_open(tmp_path):
    from latency.cache import LatencyCache

    cache = LatencyCache(tmp_path / "latency.sqlite")
    identity = {"device": "d", "settings": {}, "versions": {}, **SHAPE}
    cache.put_table("k", identity, {"a": 1})
    with pytest.raises(TypeError):
        cache.set_table_meta("k", ("b",), object())  # not JSON: fails inside the transaction
    assert not cache.conn.in_transaction
    cache.set_table_meta("k", ("b",), 2)  # the next write works, and the failed one left nothing
    assert cache.tables("k")[0]["meta"] == {"a": 1, "b": 2}
    cache.close()


def test_the_calibration_never_predicts_outside_the_latency_to_table_sum_ratios_it_was_fitted_on():
    """Ten noisy calibration models (as a small table's build gives) and a network far smaller than all of them: the
    linear fit alone predicts a negative latency there (a CI run met -0.014 ms); the calibration gives the lowest
    ratio it measured times the network's table sum instead, and leaves predictions inside the range alone."""
    archs = SearchSpace.default().sample(11, seed=7)
    rng = np.random.default_rng(7)
    rows = []
    for arch in archs:
        specs = network_layers(arch, **SHAPE)
        rows.append(features(specs, [_layer_ms(spec) for spec in specs]))
    small = {name: value * 0.05 for name, value in rows.pop().items()}
    y = Calibration.layer_sum(rows) * rng.uniform(0.5, 1.5, len(rows))
    calibration = Calibration().fit(rows, y)
    assert (calibration.ratio_low, calibration.ratio_high) == (min(y / Calibration.layer_sum(rows)),
                                                               max(y / Calibration.layer_sum(rows)))

    z = (Calibration.matrix([small]) - np.asarray(calibration.mean)) / np.asarray(calibration.scale)
    assert calibration.intercept + float((z @ np.asarray(calibration.coef))[0]) < 0  # what the linear fit alone says
    predicted = calibration.predict([small])[0]
    assert predicted == pytest.approx(calibration.ratio_low * Calibration.layer_sum([small])[0]) and predicted > 0

    fitted = calibration.predict(rows) / Calibration.layer_sum(rows)
    assert np.all((fitted >= calibration.ratio_low - 1e-12) & (fitted <= calibration.ratio_high + 1e-12))
