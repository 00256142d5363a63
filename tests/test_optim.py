"""The numeric core: encoding, the GP, log EI, the Parzen estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweeper.optim.acqopt import ascend
from sweeper.optim.acquisition import log_expected_improvement, log_expected_improvement_grad, log_h
from sweeper.optim.encoding import SpaceCodec
from sweeper.optim.gp import _neg_log_posterior, fit_gp
from sweeper.optim.history import observations
from sweeper.optim.tpe import Parzen, TPEOptions, age_weights
from sweeper.spec import flatten_config, parse_sweep
from sweeper.spec.model import Metric
from sweeper.trials import Trial, TrialState

SPACE = parse_sweep(
    {
        "method": "random",
        "metric": {"name": "loss"},
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
            "wd": {"distribution": "log_uniform", "min": -9, "max": -2},
            "drop": {"distribution": "inv_log_uniform_values", "min": 0.01, "max": 0.5},
            "units": {"min": 16, "max": 256},
            "width": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
            "batch": {"distribution": "q_log_uniform_values", "min": 16, "max": 512, "q": 8},
            "init": {"distribution": "normal", "mu": 1.0, "sigma": 2.0},
            "beta": {"distribution": "beta", "a": 2, "b": 5},
            "act": {"values": ["relu", "tanh", "gelu"]},
            "seed": {"value": 3},
            "opt": {"parameters": {"name": {"values": ["adam", "sgd"]}, "m": {"min": 0.5, "max": 0.99}}},
        },
    }
)


def test_constants_are_skipped_and_nested_paths_kept() -> None:
    codec = SpaceCodec(SPACE.parameters)
    assert ("seed",) not in codec.paths
    assert ("opt", "name") in codec.paths and ("opt", "m") in codec.paths
    assert codec.width == codec.n_params - 2 + 3 + 2  # two categoricals become 3 + 2 one-hot columns


def test_log_parameters_are_modelled_in_log_space() -> None:
    codec = SpaceCodec(SPACE.parameters)
    lr = codec.codecs[codec.paths.index(("lr",))]
    assert lr.encode(1e-3) == pytest.approx(0.5)  # the geometric middle of 1e-5 .. 1e-1
    wd = codec.codecs[codec.paths.index(("wd",))]
    assert wd.encode(math.exp(-5.5)) == pytest.approx(0.5)  # bounds are base-e exponents
    drop = codec.codecs[codec.paths.index(("drop",))]
    assert drop.encode(math.sqrt(0.01 * 0.5)) == pytest.approx(0.5)


def test_decoded_values_are_on_the_lattice_and_inside_the_bounds() -> None:
    codec = SpaceCodec(SPACE.parameters)
    rows = codec.sample(500, np.random.default_rng(0))
    rows += np.random.default_rng(1).normal(0, 0.3, rows.shape)  # and off-lattice rows
    for row in codec.snap(np.clip(rows, 0, 1)):
        flat = codec.decode(row)
        assert isinstance(flat[("units",)], int) and 16 <= flat[("units",)] <= 256
        assert flat[("width",)] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert (
            isinstance(flat[("batch",)], int) and flat[("batch",)] % 8 == 0 and 16 <= flat[("batch",)] <= 512
        )
        assert 1e-5 <= flat[("lr",)] <= 1e-1 * (1 + 1e-9)
        assert 0.0 <= flat[("beta",)] <= 1.0
        assert flat[("act",)] in ("relu", "tanh", "gelu")
        again = codec.encode(flat)  # a decoded value encodes back to the same lattice point
        assert np.allclose(codec.decode(again)[("units",)], flat[("units",)])


def test_categories_are_one_hot_with_no_order() -> None:
    codec = SpaceCodec(SPACE.parameters)
    j = codec.paths.index(("act",))
    rows = np.tile(codec.sample(1, np.random.default_rng(0)), (3, 1))
    rows[:, j] = [0, 1, 2]
    X = codec.one_hot(rows)
    d = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    assert d[0, 1] == d[0, 2] == d[1, 2] == 2.0  # every pair of categories equally far apart


def test_gp_gradient_matches_finite_differences() -> None:
    gen = np.random.default_rng(0)
    X = gen.random((25, 3))
    z = np.sin(5 * X[:, 0]) + X[:, 1]
    z = (z - z.mean()) / z.std()
    theta = gen.normal(0, 0.5, 5)
    _, grad = _neg_log_posterior(theta, X, z)
    eye = np.eye(5) * 1e-6
    num = [
        (_neg_log_posterior(theta + e, X, z)[0] - _neg_log_posterior(theta - e, X, z)[0]) / 2e-6 for e in eye
    ]
    assert np.allclose(grad, num, rtol=1e-4, atol=1e-6)


def test_gp_fits_a_known_function() -> None:
    gen = np.random.default_rng(1)
    X = gen.random((40, 2))
    f = np.sin(6 * X[:, 0]) + (X[:, 1] - 0.3) ** 2
    gp = fit_gp(X, f, gen)
    mean, var = gp.predict(X)
    assert np.max(np.abs(mean - f)) < 0.05
    test = gen.random((50, 2))
    mean_t, _ = gp.predict(test)
    assert np.sqrt(np.mean((mean_t - (np.sin(6 * test[:, 0]) + (test[:, 1] - 0.3) ** 2)) ** 2)) < 0.1
    _, var_far = gp.predict(np.array([[3.0, 3.0]]))  # far from every training point
    assert var.max() < 0.01 * var_far[0]


def test_conditioning_on_a_point_collapses_its_variance() -> None:
    gen = np.random.default_rng(2)
    X = gen.random((15, 2))
    gp = fit_gp(X, X.sum(1), gen)
    p = np.array([[0.9, 0.05]])
    _, before = gp.predict(p)
    _, after = gp.condition(p, np.array([0.95])).predict(p)
    assert after[0] < 0.1 * before[0]


def test_log_ei_matches_the_closed_form_and_stays_finite_far_out() -> None:
    from scipy.stats import norm

    mean, var, best = np.array([0.0, 1.0, -0.5]), np.array([1.0, 0.25, 4.0]), 0.2
    sd = np.sqrt(var)
    z = (best - mean) / sd
    exact = sd * (z * norm.cdf(z) + norm.pdf(z))
    assert np.allclose(np.exp(log_expected_improvement(mean, var, best)), exact)
    far = log_h(np.array([-10.0, -40.0, -400.0]))
    assert np.all(np.isfinite(far)) and far[0] > far[1] > far[2]


def test_posterior_and_log_ei_gradients_match_finite_differences() -> None:
    gen = np.random.default_rng(3)
    X = gen.random((30, 3))
    y = np.sin(5 * X[:, 0]) + X[:, 1] ** 2
    gp = fit_gp(X, y, gen)
    points = gen.random((6, 3))
    mean, var, d_mean, d_var = gp.predict_with_grad(points)
    assert np.allclose((mean, var), gp.predict(points))
    value, grad = log_expected_improvement_grad(mean, var, d_mean, d_var, float(y.min()))
    assert np.allclose(value, log_expected_improvement(mean, var, float(y.min())))
    h = 1e-6
    for d in range(3):
        step = np.zeros(3)
        step[d] = h
        up = log_expected_improvement(*gp.predict(points + step), float(y.min()))
        down = log_expected_improvement(*gp.predict(points - step), float(y.min()))
        assert np.allclose(grad[:, d], (up - down) / (2 * h), rtol=1e-4, atol=1e-4)


def test_gradient_ascent_raises_log_ei_and_leaves_categories_alone() -> None:
    codec = SpaceCodec(SPACE.parameters)
    gen = np.random.default_rng(4)
    rows = codec.sample(40, gen)
    X = codec.one_hot(rows)
    gp = fit_gp(X, (X[:, 0] - 0.3) ** 2 + X[:, 1], gen, groups=codec.groups)
    best = float(gp.predict(X)[0].min())
    starts = codec.sample(5, gen)
    moved = ascend(gp, best, starts, codec)
    before = log_expected_improvement(*gp.predict(codec.one_hot(starts)), best)
    after = log_expected_improvement(*gp.predict(codec.one_hot(moved)), best)
    assert after.sum() > before.sum()
    categorical = [j for j, c in enumerate(codec.codecs) if c.is_categorical]
    numeric = [j for j, c in enumerate(codec.codecs) if not c.is_categorical]
    assert np.array_equal(moved[:, categorical], starts[:, categorical])  # category indices, kept
    assert np.all((moved[:, numeric] >= 0) & (moved[:, numeric] <= 1))


def _trial(number: int, config: dict, state: TrialState, **summary: float) -> Trial:
    return Trial(number, "s", number, config, state, 0.0, summary=summary)


def test_failed_and_nan_trials_get_the_worst_value_and_running_ones_are_pending() -> None:
    spec = parse_sweep(
        {
            "method": "random",
            "metric": {"name": "acc", "goal": "maximize"},
            "parameters": {"x": {"min": 0.0, "max": 1.0}},
        }
    )
    codec = SpaceCodec(spec.parameters)
    trials = [
        _trial(1, {"x": 0.1}, TrialState.FINISHED, acc=0.9),
        _trial(2, {"x": 0.2}, TrialState.FINISHED, acc=0.5),
        _trial(3, {"x": 0.3}, TrialState.FAILED),
        _trial(4, {"x": 0.4}, TrialState.FINISHED, acc=float("nan")),
        _trial(5, {"x": 0.5}, TrialState.RUNNING),
    ]
    obs = observations(trials, codec, spec.metric)
    assert obs.y.tolist() == [-0.9, -0.5, -0.5, -0.5]  # maximised: negated; worst imputed
    assert obs.pending.shape == (1, 1)
    best = observations(trials, codec, Metric("acc", spec.metric.goal, impute="best"))
    assert best.y.tolist() == [-0.9, -0.5, -0.9, -0.9]
    assert best.measured.tolist() == [True, True, False, False]


def test_parzen_estimator_puts_its_mass_near_its_points_and_handles_absent_parameters() -> None:
    codec = SpaceCodec(SPACE.parameters)
    gen = np.random.default_rng(3)
    centres = np.tile(codec.sample(1, gen), (8, 1))
    centres[:4, codec.paths.index(("opt", "m"))] = np.nan  # absent in half the trials
    parzen = Parzen(codec, centres, TPEOptions())
    near = codec.snap(centres[4:] + 0.01)
    far = codec.sample(200, gen)
    assert np.median(parzen.log_pdf(near)) > np.median(parzen.log_pdf(far))
    drawn = parzen.sample(100, gen)
    assert not np.isnan(drawn).any()
    assert np.all(codec.snap(drawn) == drawn)


def test_flatten_config_round_trip_through_the_codec() -> None:
    codec = SpaceCodec(SPACE.parameters)
    flat = codec.decode(codec.sample(1, np.random.default_rng(4))[0])
    assert np.allclose(codec.encode(flat), codec.encode(flatten_config({**{"x": 1}, **{}}) | flat))


def test_ascent_starts_take_the_best_and_draw_the_rest_by_expected_improvement() -> None:
    from sweeper.optim.bo import N_LOCAL_STARTS, N_TOP_STARTS, _ascent_starts

    scores = np.full(1000, -50.0)  # log EI: all but a few candidates are hopeless
    scores[:N_TOP_STARTS] = 0.0
    scores[100:110] = -1.0
    starts = _ascent_starts(scores, np.random.default_rng(0))
    assert len(starts) == N_LOCAL_STARTS and len(set(starts.tolist())) == N_LOCAL_STARTS
    assert set(starts[:N_TOP_STARTS].tolist()) == set(range(N_TOP_STARTS))
    assert all(100 <= i < 110 for i in starts[N_TOP_STARTS:])  # exp(-49) weighs nothing beside them


def test_an_input_the_data_ignore_gets_a_long_length_scale_and_a_flat_model_along_it() -> None:
    gen = np.random.default_rng(3)
    X = gen.random((40, 2))
    y = np.sin(6.0 * X[:, 0])  # flat in the second input
    gp = fit_gp(X, y, np.random.default_rng(0))
    assert gp.scales[0] < 1.0
    assert gp.scales[1] > 4 * gp.scales[0]  # the model learns that the second input matters less
    # ... and the fitted model barely moves along it, while it follows the first input's wave.
    along_first = gp.predict(np.column_stack([np.linspace(0, 1, 21), np.full(21, 0.5)]))[0]
    along_second = gp.predict(np.column_stack([np.full(21, 0.25), np.linspace(0, 1, 21)]))[0]
    assert np.ptp(along_second) < 0.1 * np.ptp(along_first)


def test_parzen_kernels_are_narrow_where_centres_cluster_and_wide_where_they_are_alone() -> None:
    from sweeper.optim.tpe import _neighbour_bandwidths

    col = np.array([0.10, 0.11, 0.12, 0.13, 0.90, np.nan])
    bw = _neighbour_bandwidths(col, floor=0.0)
    assert bw[5] == 1.0  # absent: not a centre
    assert bw[1] == pytest.approx(1.0 / 7.0)  # gaps of 0.01, raised to the floor 1 / (6 kernels + 1)
    assert bw[4] == pytest.approx(0.4)  # the gap back to the prior's middle
    assert bw[4] > bw[1]
    assert np.all(_neighbour_bandwidths(col, floor=0.3)[:5] >= 0.3)  # never under a lattice cell


def test_tpe_weighs_trials_older_than_the_newest_25_less() -> None:
    assert list(age_weights(24)) == [1.0] * 24
    weights = age_weights(100)
    assert len(weights) == 100 and list(weights[-25:]) == [1.0] * 25
    assert weights[0] == pytest.approx(0.01) and np.all(np.diff(weights[:75]) > 0)
    shorter = age_weights(10, newest=4)  # TPEOptions.full_weight_newest
    assert list(shorter[-4:]) == [1.0] * 4 and shorter[4] < 1.0 and shorter[0] == pytest.approx(0.1)


def test_creeping_gains_do_not_count_as_improvement_until_they_add_up() -> None:
    from sweeper.optim.bo import trials_since_improvement

    y = np.array([50.0, 20.0, 30.0, 40.0, 45.0, 35.0, 25.0, 2.0] + [1.99999] * 5)
    # The tolerance is a thousandth of median - best (20 - 2): the creep of 1e-5 is far below it.
    assert trials_since_improvement(y) == 5
    crept = np.concatenate([y, [1.95]])  # the creep now adds up to 0.05 below the last real best
    assert trials_since_improvement(crept) == 0
    assert trials_since_improvement(np.array([3.0, 2.0, 1.0])) == 0
    assert trials_since_improvement(np.array([1.0, 2.0, 3.0])) == 2
    assert trials_since_improvement(np.array([4.0, 4.0, 4.0])) == 2  # no spread at all


def _stall_case(values: list[float | None], impute: str = "worst") -> int:
    """``stalled_for`` of a one-parameter bayes sweep whose trials scored ``values`` (None: failed)."""
    from sweeper.optim.bo import stalled_for

    codec = SpaceCodec(_ONE_PARAMETER.parameters)
    trials = [
        _trial(i + 1, {"x": i / len(values)}, TrialState.FAILED)
        if v is None
        else _trial(i + 1, {"x": i / len(values)}, TrialState.FINISHED, loss=v)
        for i, v in enumerate(values)
    ]
    return stalled_for(
        codec, observations(trials, codec, Metric("loss", _ONE_PARAMETER.metric.goal, impute=impute))
    )


_ONE_PARAMETER = parse_sweep(
    {"method": "bayes", "metric": {"name": "loss"}, "parameters": {"x": {"min": 0.0, "max": 1.0}}}
)


def test_the_initial_design_does_not_count_towards_a_stall() -> None:
    from sweeper.optim.bo import n_initial

    first = n_initial(SpaceCodec(_ONE_PARAMETER.parameters))
    # The first trial stays the best: only the trials after the initial design count.
    assert _stall_case([0.0] + [1.0] * 29) == 30 - first


def test_an_imputed_best_value_does_not_freeze_the_stall_count() -> None:
    improving = [10.0 - 0.05 * i for i in range(40)]
    # A failed trial given the best value of the whole history would otherwise beat every later one.
    assert _stall_case([None, *improving], impute="best") == 0
    assert _stall_case([None, *improving], impute="worst") == 0


def test_the_share_of_draws_anywhere_grows_with_the_stall_up_to_a_half() -> None:
    from sweeper.optim.bo import STALL_TRIALS, exploration_share

    assert exploration_share(0) == exploration_share(STALL_TRIALS) == 0.0
    assert 0.0 < exploration_share(STALL_TRIALS + 10) < exploration_share(STALL_TRIALS + 40) < 0.5
    assert exploration_share(10_000) == 0.5
