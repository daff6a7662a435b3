"""Whole-model latency from a per-device layer table plus a calibration, with its error stated.

Measured here (host LiteRT, 1 thread, 224x224x3): the plain sum of a network's layers, each timed as its own
model, was 0.955 / 0.954 / 0.879 of the whole model (mnasnet_b1, mobilenet_v2, a child with SE in most stages). No
constant fixes that: a layer timed alone finds its weights and input in the cache it warmed up itself, while in the
network every layer's weights and activations compete for it, and SE's global pooling reads a tensor the layer
before has just written. The calibration therefore learns what differs, from a few dozen whole models measured for
real (``table build --calibration N``, 150 by default): a ridge regression (weighted for relative error) of the
measured latency on the table sum split by layer type (stem, head, conv, depthwise-separable, MBConv 3/6, each with
and without SE) and by input size, the downsampling layers' sum, the number of layers (each table entry carries one
invoke's overhead, the whole model only one) and of skips, and what the layers move through memory (weights,
activations, SE activations). The type sums, layer count and memory terms were chosen by leave-one-out on 60
calibration models; the size, downsampling and skip terms by 10-fold cross-validation on the 150 calibration models of
the 224 px host table (README: "Latency lookup tables").

With 150 or more calibration models a learned residual is tried on top: gradient-boosted trees (scikit-learn) on the
log of measured / ridge latency, from the same features, each block's choices and the ridge prediction. It is kept
only if it pays: a 10-fold cross-validation on the calibration set must give a relative RMSE at least 3% lower than
the ridge alone (the decision and both figures are stated with every prediction). On the 224 px host table it did
(3.41% against 3.79%); trained on 100 or fewer models it did not pay (README: "The learned residual"), hence the
minimum.

``table validate --n N`` measures N further random architectures (never used for calibration) and stores them with
the table; every prediction carries the error on that held-out set (``extra["stated_error"]``).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from latency.result import LatencyResult
from search_spaces.layers import HEAD_CHANNELS, LayerSpec, network_layers

MIN_CALIBRATION = 9  # fewer calibration models: the plain table sum (the ridge penalty keeps 9+ usable)
RIDGE_ALPHA = 3e-3  # on standardised features; chosen by 5 x 10-fold cross-validation on the calibration set (README)
RESIDUAL_MIN = 150  # calibration models before the learned residual is tried (it cost accuracy below ~100, README)
RESIDUAL_FOLDS = 10  # the cross-validation that decides whether the residual pays ...
RESIDUAL_GAIN = 0.97  # ... by cutting the cross-validated relative RMSE by 3% or more (host table: by 10%)
RESIDUAL_SCHEME = 2  # bump when the residual's model or its cross-validation changes: stored decisions are then redone


class LatencyTableMissing(ValueError):
    """No table (or no usable table) for this device, runner settings and input; the message names the command."""


# ------------------------------------------------------------------------------------------------ features
def layer_costs(spec: LayerSpec) -> dict[str, float]:
    """Weights and activation elements one layer moves through memory, from its shape (BN folded into the convs)."""
    h, ho, cin, cout, k = spec.size, spec.out_size, spec.cin, spec.cout, spec.kernel
    if spec.kind == "stem":
        return {"weights": cin * cout * k * k + cout, "acts": cin * h * h + cout * ho * ho, "se_acts": 0.0}
    if spec.kind == "head":
        return {"weights": cin * HEAD_CHANNELS + HEAD_CHANNELS * (cout + 1) + cout,
                "acts": cin * h * h + 2 * HEAD_CHANNELS * h * h, "se_acts": 0.0}
    weights = 0.0
    acts = cin * h * h + cout * ho * ho
    if spec.block_type == "cn":
        weights += cin * cout * k * k + cout
        se_width = cout
    elif spec.block_type == "ds":
        weights += cin * k * k + cin + cin * cout + cout
        acts += cin * ho * ho
        se_width = cin
    else:
        mid = cin * spec.expansion
        if spec.expansion != 1:
            weights += cin * mid + mid
            acts += mid * h * h
        weights += mid * k * k + mid + mid * cout + cout
        acts += mid * ho * ho
        se_width = mid
    se_acts = 0.0
    if spec.se:
        weights += 2 * se_width * spec.se + se_width + spec.se
        se_acts = se_width * ho * ho  # pooled, then multiplied by the gate: read twice more
        acts += 2 * se_acts
    if spec.skip != "none":
        acts += cin * h * h
    return {"weights": weights, "acts": acts, "se_acts": se_acts}


def layer_group(spec: LayerSpec) -> str:
    if spec.kind != "layer":
        return spec.kind
    op = f"ir{spec.expansion}" if spec.block_type == "ir" else spec.block_type
    return op + ("_se" if spec.se else "")


GROUPS = ("stem", "head", "cn", "cn_se", "ds", "ds_se", "ir3", "ir3_se", "ir6", "ir6_se")


LEVELS = 5  # input-size levels of a 5-stride network: 1/2, 1/4, ... 1/32 of the resolution


def layer_level(spec: LayerSpec, resolution: int) -> int:
    """1 for layers reading a map of half the network's resolution, 2 for a quarter, ... clamped to 1..LEVELS."""
    level = round(math.log2(max(resolution, 1) / max(spec.size, 1)))
    return min(max(level, 1), LEVELS)


def features(layers: Sequence[LayerSpec], times: Sequence[float]) -> dict[str, float]:
    """The calibration's inputs for one network: its layers and their table latencies (ms)."""
    out = {f"sum_{g}": 0.0 for g in GROUPS}
    out.update({f"sum_level{i}": 0.0 for i in range(1, LEVELS + 1)})
    out.update(layers=float(len(layers)), weights_mb=0.0, acts_mb=0.0, se_acts_mb=0.0, skips=0.0, sum_stride2=0.0)
    resolution = layers[0].size if layers else 1  # the stem reads the network's input
    for spec, t in zip(layers, times):
        group = layer_group(spec)
        out[f"sum_{group}" if f"sum_{group}" in out else "sum_ir6"] += t
        cost = layer_costs(spec)
        out["weights_mb"] += 4 * cost["weights"] / 1e6
        out["acts_mb"] += 4 * cost["acts"] / 1e6
        out["se_acts_mb"] += 4 * cost["se_acts"] / 1e6
        if spec.kind == "layer":
            out[f"sum_level{layer_level(spec, resolution)}"] += t
            out["skips"] += spec.skip != "none"
            if spec.out_size < spec.size:
                out["sum_stride2"] += t
    return out


# Beside the table sums by layer type: the sums by input size and of the downsampling layers, and the number of
# skips. 10-fold on the 150 calibration models of the 224 px host table (README "Latency lookup tables"): 62.0% within
# +-5% without them, 69.7% with them.
FEATURES = (tuple(f"sum_{g}" for g in GROUPS) + tuple(f"sum_level{i}" for i in range(1, LEVELS + 1))
            + ("layers", "weights_mb", "acts_mb", "se_acts_mb", "skips", "sum_stride2"))


@dataclass
class Calibration:
    """Ridge regression of measured latency on :func:`features` (standardised; the intercept is not penalised).

    A prediction is kept within the ratios of measured latency to table sum that the calibration models showed
    (``ratio_low`` .. ``ratio_high``): a linear fit extrapolates without limit, and a few calibration models fitted
    with the full feature set had predicted a negative latency for a network smaller than all of them.
    """

    alpha: float = RIDGE_ALPHA
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    ratio_low: float = 0.0
    ratio_high: float = math.inf
    n: int = 0

    @staticmethod
    def matrix(rows: Sequence[dict]) -> np.ndarray:
        return np.array([[r[name] for name in FEATURES] for r in rows], dtype=float)

    @staticmethod
    def layer_sum(rows: Sequence[dict]) -> np.ndarray:
        """Each network's table sum (every layer's table latency, stem and head included)."""
        return np.array([sum(r[f"sum_{g}"] for g in GROUPS) for r in rows], dtype=float)

    def fit(self, rows: Sequence[dict], y: Sequence[float]) -> Calibration:
        x, y = self.matrix(rows), np.asarray(y, dtype=float)
        self.n = len(y)
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        z = (x - mean) / scale
        # Relative error is what is judged: weight each model by 1/y^2 (least squares on y_hat/y - 1).
        w = 1.0 / y**2
        w /= w.mean()  # so that alpha means the same whatever the latencies' scale
        zw = np.c_[np.ones(len(y)), z] * np.sqrt(w)[:, None]
        yw = y * np.sqrt(w)
        penalty = self.alpha * len(y) * np.eye(z.shape[1] + 1)
        penalty[0, 0] = 0.0
        beta = np.linalg.solve(zw.T @ zw + penalty, zw.T @ yw)
        self.mean, self.scale = mean.tolist(), scale.tolist()
        self.intercept, self.coef = float(beta[0]), beta[1:].tolist()
        total = self.layer_sum(rows)
        ratios = y[total > 0] / total[total > 0]
        if len(ratios):
            self.ratio_low, self.ratio_high = float(ratios.min()), float(ratios.max())
        return self

    def predict(self, rows: Sequence[dict]) -> np.ndarray:
        z = (self.matrix(rows) - np.asarray(self.mean)) / np.asarray(self.scale)
        linear = self.intercept + z @ np.asarray(self.coef)
        total = self.layer_sum(rows)
        return np.where(total > 0, np.clip(linear, self.ratio_low * total, self.ratio_high * total), linear)


SHAPE_WIDTH = 7  # numbers per block in arch_shape


def arch_shape(arch: str) -> list[float]:
    """Each block's choices, in block order: layers, kernel, expansion, SE, skip (none / identity / pool), block type
    (cn / ds / ir) and output channels. The residual's view of where in the network a choice sits."""
    from search_spaces.arch import parse_arch

    skips, types = {"none": 0, "identity": 1, "pool": 2}, {"cn": 0, "ds": 1, "ir": 2}
    out: list[float] = []
    for b in parse_arch(arch).blocks:
        out += [b.repeats, b.kernel, b.expansion, float(b.se_ratio > 0), skips.get(b.skip, 3),
                types.get(b.block_type, 3), b.out_channels]
    return out


def kfold(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint folds of ``range(n)`` (a seeded shuffle, split evenly): the cross-validations' folds."""
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


@dataclass
class Residual:
    """Gradient-boosted trees on ``log(measured / ridge)``, from :func:`features`, :func:`arch_shape` and the ridge
    prediction; :meth:`predict` returns the factor to multiply the ridge prediction by.

    The trees learn from out-of-fold ridge predictions (5 folds): the ridge's in-sample residuals are smaller than
    those it makes on networks it has not seen, which are the ones the residual has to correct.
    """

    blocks: int = 0
    model: object = None

    @staticmethod
    def _inputs(rows: Sequence[dict], shapes: np.ndarray, ridge: np.ndarray) -> np.ndarray:
        return np.c_[Calibration.matrix(rows), shapes, ridge]

    def fit(self, rows: Sequence[dict], shapes: Sequence[Sequence[float]], y: Sequence[float]) -> Residual:
        from sklearn.ensemble import GradientBoostingRegressor

        shapes, y = np.asarray(shapes, dtype=float), np.asarray(y, dtype=float)
        oof = np.zeros(len(y))
        for fold in kfold(len(y), 5, seed=1):
            train = np.setdiff1d(np.arange(len(y)), fold)
            ridge = Calibration().fit([rows[i] for i in train], y[train])
            oof[fold] = ridge.predict([rows[i] for i in fold])
        oof = np.maximum(oof, 1e-6)
        self.blocks = shapes.shape[1] // SHAPE_WIDTH
        self.model = GradientBoostingRegressor(max_depth=2, n_estimators=100, learning_rate=0.05, subsample=0.8,
                                               random_state=0).fit(self._inputs(rows, shapes, oof), np.log(y / oof))
        return self

    def applies(self, shape: Sequence[float]) -> bool:
        """Only networks with as many blocks as the calibration set's (a table's space fixes the count)."""
        return len(shape) == self.blocks * SHAPE_WIDTH

    def predict(self, rows: Sequence[dict], shapes: Sequence[Sequence[float]], ridge: np.ndarray) -> np.ndarray:
        return np.exp(self.model.predict(self._inputs(rows, np.asarray(shapes, dtype=float), np.asarray(ridge))))


def ridge_and_residual(train: tuple, test: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Fitted on ``train``, predicted for ``test`` (each ``(feature rows, arch shapes, latencies)``; the test's
    latencies are not used): the ridge alone, and the ridge times :class:`Residual`'s factor."""
    rows, shapes, y = train
    ridge = Calibration().fit(rows, y).predict(test[0])
    return ridge, ridge * Residual().fit(rows, shapes, y).predict(test[0], test[1], ridge)


def residual_pays(rows: Sequence[dict], shapes: Sequence[Sequence[float]], y: Sequence[float], *,
                  folds: int = RESIDUAL_FOLDS) -> dict:
    """Cross-validated relative RMSE of the ridge alone and of the ridge with :class:`Residual` on the same folds;
    ``pays`` is True when the residual's is lower by :data:`RESIDUAL_GAIN` or more (a smaller gain is the folds'
    noise: on latencies the ridge explains, the trees came within 1% either way)."""
    shapes, y = np.asarray(shapes, dtype=float), np.asarray(y, dtype=float)
    plain, boosted = np.zeros(len(y)), np.zeros(len(y))
    for fold in kfold(len(y), folds, seed=0):
        train = np.setdiff1d(np.arange(len(y)), fold)
        plain[fold], boosted[fold] = ridge_and_residual(([rows[i] for i in train], shapes[train], y[train]),
                                                        ([rows[i] for i in fold], shapes[fold], y[fold]))
    ridge_rmse = float(np.sqrt(np.mean((plain / y - 1) ** 2)))
    residual_rmse = float(np.sqrt(np.mean((boosted / y - 1) ** 2)))
    return {"folds": folds, "ridge_rmse_rel": ridge_rmse, "residual_rmse_rel": residual_rmse,
            "pays": residual_rmse <= RESIDUAL_GAIN * ridge_rmse}


def residual_fingerprint(rows: Sequence[dict], shapes: Sequence[Sequence[float]], y: Sequence[float]) -> str:
    """What :func:`residual_pays` decides from: the calibration set (features, shapes, latencies), the scheme and the
    scikit-learn version. A decision stored with this fingerprint is the one the cross-validation would give again."""
    import hashlib
    import json
    from importlib.metadata import PackageNotFoundError, version

    try:
        sklearn = version("scikit-learn")
    except PackageNotFoundError:
        sklearn = None
    payload = {"rows": list(rows), "shapes": [list(map(float, s)) for s in shapes], "y": [float(v) for v in y],
               "folds": RESIDUAL_FOLDS, "gain": RESIDUAL_GAIN, "scheme": RESIDUAL_SCHEME, "sklearn": sklearn}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ figures
def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either list handled), O(n^2): fine for a few hundred models."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    denom = math.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    return float((da * db).sum() / denom) if denom else float("nan")


def error_figures(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """Share within +-5% and +-10%, RMSE (ms and relative), max and 95th-percentile relative error, bias, tau."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = p / m - 1
    return {
        "n": int(len(m)),
        "within_5": float(np.mean(np.abs(rel) <= 0.05)),
        "within_10": float(np.mean(np.abs(rel) <= 0.10)),
        "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
        "rmse_rel": float(np.sqrt(np.mean(rel**2))),
        "max_rel": float(np.max(np.abs(rel))),
        "p95_rel": float(np.percentile(np.abs(rel), 95)),
        "bias_rel": float(np.mean(rel)),
        "kendall_tau": kendall_tau(p, m),
    }


# ------------------------------------------------------------------------------------------------ predictor
class Predictor:
    """``predict(arch) -> LatencyResult`` from one table; built by :func:`load_predictor` or :meth:`from_service`."""

    def __init__(self, *, table: dict, layers: dict[str, float], calibration_rows: list[dict],
                 validation_rows: list[dict], space: str, runner: str, build_command: str, residual: bool = True,
                 residual_decision: dict | None = None):
        """``residual_decision``: a cross-validation stored with the table (``residual_cv`` plus its
        ``fingerprint``); used instead of running it again (about 2 s) when its fingerprint is this calibration
        set's. ``residual_cv_new`` then says whether one was run here (and is worth storing)."""
        self.table = table
        self.table_key = table["table_key"]
        self.device = table["device"]
        self.resolution, self.channels, self.num_classes = table["resolution"], table["channels"], table["num_classes"]
        self.layers = layers
        self.space = space
        self.runner = runner
        self.build_command = build_command
        self.calibration = None
        self.residual: Residual | None = None
        self.residual_cv: dict | None = None  # the cross-validation that decided on the residual, when one was tried
        self.residual_cv_new = False
        rows, shapes, y = self.dataset(calibration_rows)
        if len(y) >= MIN_CALIBRATION:
            self.calibration = Calibration().fit(rows, y)
            if residual and len(y) >= RESIDUAL_MIN and len({len(s) for s in shapes}) == 1:
                fingerprint = residual_fingerprint(rows, shapes, y)
                if residual_decision and residual_decision.get("fingerprint") == fingerprint:
                    self.residual_cv = dict(residual_decision)
                else:
                    self.residual_cv = {**residual_pays(rows, shapes, y), "fingerprint": fingerprint}
                    self.residual_cv_new = True
                if self.residual_cv["pays"]:
                    self.residual = Residual().fit(rows, shapes, y)
        self.calibration_n = len(y)
        usable_val = [r for r in validation_rows if not self._times(r["arch"])[1]]
        self.stated_error = (error_figures([self._predict_ms(r["arch"])[0] for r in usable_val],
                                           [r["latency_ms"] for r in usable_val]) if usable_val else {"n": 0})
        self.stated_error["calibration_n"] = self.calibration_n
        self.stated_error["model"] = self.model_name
        if self.residual_cv is not None:
            self.stated_error["residual_cv"] = {k: v for k, v in self.residual_cv.items() if k != "fingerprint"}

    @property
    def model_name(self) -> str:
        """``table sum``, ``ridge`` or ``ridge + residual``: what turns the table's layer times into a latency."""
        if self.calibration is None:
            return "table sum"
        return "ridge + residual" if self.residual is not None else "ridge"

    # -- table lookups
    def _network(self, arch: str) -> list[LayerSpec]:
        return network_layers(arch, resolution=self.resolution, channels=self.channels, num_classes=self.num_classes)

    def _times(self, arch: str) -> tuple[list[float], list[str]]:
        times, missing = [], []
        for spec in self._network(arch):
            t = self.layers.get(spec.key)
            if t is None:
                missing.append(spec.key)
            else:
                times.append(t)
        return times, missing

    def _features(self, arch: str) -> dict:
        return features(self._network(arch), self._times(arch)[0])

    def dataset(self, models: Sequence[dict]) -> tuple[list[dict], list[list[float]], list[float]]:
        """``(feature rows, arch shapes, latencies)`` of the stored models (``{"arch", "latency_ms"}``) whose layers
        are all in the table: what the calibration learns from."""
        usable = [m for m in models if not self._times(m["arch"])[1]]
        return ([self._features(m["arch"]) for m in usable], [arch_shape(m["arch"]) for m in usable],
                [m["latency_ms"] for m in usable])

    def _predict_ms(self, arch: str) -> tuple[float, bool]:
        """The predicted latency, and whether the learned residual was applied to it."""
        row = self._features(arch)
        if self.calibration is None:
            return float(Calibration.layer_sum([row])[0]), False
        ridge = self.calibration.predict([row])
        shape = arch_shape(arch)
        if self.residual is None or not self.residual.applies(shape):
            return float(ridge[0]), False
        return float(ridge[0] * self.residual.predict([row], [shape], ridge)[0]), True

    # -- public
    def predict(self, arch: str) -> LatencyResult:
        """The predicted latency (``latency_ms``) with ``extra = {source: predicted, stated_error, layer_sum_ms,
        table}``; a failed result (never an exception) when layers of ``arch`` are not in the table."""
        from search_spaces import resolve_arch

        arch = resolve_arch(arch)
        base = dict(arch=arch, resolution=self.resolution, channels=self.channels, num_classes=self.num_classes,
                    device=self.device, runner=self.runner)
        times, missing = self._times(arch)
        if missing:
            return LatencyResult(status="failed", **base, extra={"source": "predicted", "missing_layers": missing},
                                 error=f"{len(missing)} layer(s) of this network are not in latency table "
                                       f"{self.table_key} (e.g. {missing[0]}); add them with: "
                                       f"{self.build_command} --arch {shlex.quote(arch)}")
        latency, residual = self._predict_ms(arch)
        extra = {"source": "predicted", "stated_error": dict(self.stated_error), "layer_sum_ms": float(sum(times)),
                 "table": self.table_key, "calibrated": self.calibration is not None, "residual": residual}
        return LatencyResult(status="ok", latency_ms=latency, **base, extra=extra)

    def predict_many(self, archs: Sequence[str]) -> list[LatencyResult]:
        return [self.predict(a) for a in archs]

    def describe_error(self) -> str:
        e = self.stated_error
        if not e.get("n"):
            return "not validated"
        return (f"{100 * e['within_5']:.1f}% of {e['n']} held-out architectures within +-5%, "
                f"{100 * e['within_10']:.1f}% within +-10%, RMSE {100 * e['rmse_rel']:.2f}%, max "
                f"{100 * e['max_rel']:.1f}%, Kendall tau {e['kendall_tau']:.3f} ({self.model_name}, "
                f"{self.calibration_n} calibration models)")

    @classmethod
    def from_service(cls, service, *, resolution: int = 224, channels: int = 3, num_classes: int = 1000,
                     space: str = "mnasnet", device: str | None = None, table: str | None = None,
                     residual: bool = True) -> Predictor:
        from latency.table import space_label

        info = find_table(service, resolution=resolution, channels=channels, num_classes=num_classes, device=device,
                          table=table, space=space)  # the space as given: the build command must accept it
        space = space_label(space)
        key = info["table_key"]
        rows = service.cache.layers(key)
        layers = {k: r["latency_ms"] for k, r in rows.items() if r["status"] == "ok"}
        predictor = cls(table=info, layers=layers, calibration_rows=service.cache.models(key, "calibration", space),
                        validation_rows=service.cache.models(key, "validation", space), space=space,
                        runner=service.runner_config["runner"], build_command=info["build_command"],
                        residual=residual, residual_decision=info["meta"].get("residual_cv", {}).get(space))
        if predictor.residual_cv_new:  # the next load (a search's worker, the predict command) reuses it
            from latency.cache import LatencyCacheError

            try:
                service.cache.set_table_meta(key, ("residual_cv", space), predictor.residual_cv)
            except LatencyCacheError:  # a cache this process may not write: the next load decides again
                pass
        return predictor


def find_table(service, *, resolution: int, channels: int, num_classes: int, device: str | None = None,
               table: str | None = None, space: str | None = "mnasnet", check_input: bool = True) -> dict:
    """The table for this service's device, settings and input (or the one named by key prefix ``table``, which
    must have been built for this input unless ``check_input`` is false: ``table export`` takes it whole).

    Raises :class:`LatencyTableMissing` with one line naming the build command when there is none.
    """
    from latency.runners import DeviceError
    from latency.service import checked_input
    from latency.table import build_command, identity_key, table_identity

    checked_input(resolution, channels, num_classes)
    command = build_command(service, space=space or "mnasnet", resolution=resolution, channels=channels,
                            num_classes=num_classes)
    tables = service.cache.tables()
    if table:
        found = [t for t in tables if t["table_key"].startswith(table)]
        if len(found) != 1:
            raise LatencyTableMissing(f"{'no' if not found else len(found)} latency table(s) match {table!r} in "
                                      f"{service.cache_path} (python -m latency table list)")
        t = found[0]
        built, asked = (t["channels"], t["resolution"], t["num_classes"]), (channels, resolution, num_classes)
        if check_input and built != asked:  # its layers were timed at another input: every prediction would be off
            raise LatencyTableMissing(
                f"latency table {t['table_key'][:12]} was built for {built[0]}x{built[1]}x{built[1]}, {built[2]} "
                f"classes, not {asked[0]}x{asked[1]}x{asked[1]}, {asked[2]} classes (--channels/--resolution/"
                f"--classes, deploy.*); build one for this input with: {command}")
        return _for_space({**t, "build_command": command}, space)
    try:
        identity = table_identity(service, resolution=resolution, channels=channels, num_classes=num_classes,
                                  device=device)
    except DeviceError as exc:
        raise LatencyTableMissing(f"{exc}; to use a table without the device, pass its model "
                                  "(--device / device=, see python -m latency table list)") from None
    key = identity_key(identity)
    found = [t for t in tables if t["table_key"] == key]
    if not found or not found[0]["layers"]:
        same_device = [t["table_key"] for t in tables if t["device"] == identity["device"]]
        hint = (f" (tables for {identity['device']} with other settings or inputs: {', '.join(same_device)})"
                if same_device else "")
        raise LatencyTableMissing(f"no latency table for {identity['device']} at {channels}x{resolution}x"
                                  f"{resolution}, {num_classes} classes with these runner settings and converter "
                                  f"versions in {service.cache_path}{hint}; build it with: {command}")
    return _for_space({**found[0], "build_command": command}, space)


def _for_space(info: dict, space: str | None) -> dict:
    """``info``, or :class:`LatencyTableMissing` where the table was built and calibrated for other spaces only: a
    misspelt or forgotten space name would otherwise predict the plain layer sum (uncalibrated) in silence."""
    from latency.table import space_label, table_spaces

    known = set(info["meta"].get("spaces", {})) | table_spaces(info, "calibration")
    if space is None or not known or space_label(space) in known:
        return info
    raise LatencyTableMissing(f"latency table {info['table_key'][:12]} was built for space(s) "
                              f"{', '.join(sorted(known))}, not {space_label(space)!r}: name one of those (--space, "
                              f"latency.table_space) or add this one with: {info['build_command']}")


def load_predictor(runner_config: dict | None = None, *, resolution: int = 224, channels: int = 3,
                   num_classes: int = 1000, cache_path=None, space: str | None = None, device: str | None = None,
                   table: str | None = None, residual: bool = True) -> Predictor:
    """The predictor for a latency config (``configs/latency/*.yaml`` fields or ``{"runner": "host", ...}``).

    A search's config (``cfg.latency``) also holds its mode keys: its ``table_space`` and ``table`` are the defaults
    of ``space`` (else ``mnasnet``) and ``table``; ``mode`` and ``hybrid_top_k`` are the search's alone (they were
    passed on to the runner, which refused them).

    Raises :class:`LatencyTableMissing` (a ``ValueError``) naming the build command when no table exists.
    """
    from latency.service import DEFAULT_ANCHOR, LatencyService, checked_input

    checked_input(resolution, channels, num_classes)  # before the service opens (creates) its cache
    config = dict(runner_config or {"runner": "host"})
    for key in ("_target_", "name", "mode", "hybrid_top_k"):
        config.pop(key, None)
    given_space, given_table = config.pop("table_space", None), config.pop("table", None)
    space, table = space or given_space or "mnasnet", table or given_table
    runner = config.pop("runner", "host")
    if runner == "host":  # as configs/latency/host.yaml and the CLI: host tables are built with the drift anchor
        config.setdefault("anchor", DEFAULT_ANCHOR)
    config["cache_path"] = cache_path if cache_path is not None else config.get("cache_path")
    with LatencyService(runner, **config) as service:
        return Predictor.from_service(service, resolution=resolution, channels=channels, num_classes=num_classes,
                                      space=space, device=device, table=table, residual=residual)


def validate(service, *, n: int = 200, space: str = "mnasnet", resolution: int = 224, channels: int = 3,
             num_classes: int = 1000, progress: bool = True) -> dict:
    """Measure ``n`` random architectures of ``space`` that the calibration never saw, store them with the table,
    and return the predictor's error on them (the figures every prediction then carries)."""
    from latency.table import load_space, measure_models, space_label

    given, space_obj, space = space, load_space(space), space_label(space)
    info = find_table(service, resolution=resolution, channels=channels, num_classes=num_classes, space=given)
    key = info["table_key"]
    measure_models(service, key, space_obj, space, "validation", n, resolution=resolution,
                   channels=channels, num_classes=num_classes, progress=progress)
    predictor = Predictor.from_service(service, resolution=resolution, channels=channels, num_classes=num_classes,
                                       space=space)
    if not predictor.stated_error["n"]:  # nothing to judge the predictor on: store no figures, say why
        build = info["build_command"]
        raise ValueError(f"none of the held-out architectures of space {space!r} could be both measured and "
                         f"predicted (each failed to convert or time, or has layers table {key[:12]} lacks); add "
                         f"the space's layers with: {build}")
    figures = {**predictor.stated_error, "device": predictor.device, "table_key": key, "space": space}
    service.cache.set_table_meta(key, ("validation", space), figures)
    return figures
