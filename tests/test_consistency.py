"""bsp, ssp and asp: the parameter server's pushes, staleness, shards, and jobs on Ray."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from bptrain.specfile import spec_from_dict
from services.api.convert import spec_from_proto
from services.datasets import load_dataset
from services.jobs.records import JobState
from services.jobs.runner import JobRunner
from services.jobs.runner_options import RunnerOptions
from services.jobs.weights import join_exported
from services.paramserver.optimizers import OptimizerConfig
from services.paramserver.server import ParameterServer
from tests.conftest import digits_spec
from tests.engine import parameter_server
from worker.compression import GradientCompressor
from worker.gradient_worker import GradientResult
from worker.layout import ParamLayout
from worker.model import MLP

SIZES = [3, 4, 2]
ACTIVATIONS = ["tanh", "identity"]
P = 26


def make_server(consistency: str = "asp", **changes) -> ParameterServer:
    fields = {
        "sizes": SIZES,
        "activations": ACTIVATIONS,
        "optimizer": OptimizerConfig(kind="sgd", learning_rate=0.5),
        "workers": 2,
        "seed": 0,
        "consistency": consistency,
    }
    return parameter_server(**{**fields, **changes})


def result(worker: int, clock: int, value: float = 1.0, samples: int = 4) -> GradientResult:
    return GradientResult(
        gradient=np.full(P, value, dtype=np.float32),
        samples=samples,
        loss=0.5,
        worker=worker,
        clock=clock,
    )


# --- pushes (asp/ssp) without Ray ------------------------------------------------------------


def test_a_push_is_applied_at_once_and_its_staleness_counts_the_updates_since_its_read() -> None:
    server = make_server()
    server.read_theta(0, 0)  # worker 0 reads version 0
    server.read_theta(1, 0)
    server.push(result(1, 0))  # version 1

    stats = server.push(result(0, 0))  # computed on version 0, applied at version 1

    assert stats.staleness == (1,)
    assert stats.version == 2
    assert server.clocks() == [1, 1]


def test_staleness_aware_learning_rate_divides_eta_by_one_plus_staleness() -> None:
    plain, aware = make_server(), make_server(staleness_aware_lr=True)
    for server in (plain, aware):
        for worker in (0, 1):
            server.read_theta(worker, 0)
        server.push(result(0, 0))
    before = aware.export()[1]

    assert plain.push(result(1, 0)).learning_rate == pytest.approx(0.5)
    stats = aware.push(result(1, 0))

    assert stats.learning_rate == pytest.approx(0.5 / 2)  # staleness 1
    np.testing.assert_allclose(before - aware.export()[1], 0.25, rtol=1e-6)


def test_a_retried_push_is_applied_once() -> None:
    server = make_server()
    first = server.push(result(0, 0))
    theta = server.export()[1]

    again = server.push(result(0, 0))

    assert again == first
    np.testing.assert_array_equal(server.export()[1], theta)
    assert server.version == 1


def test_pushes_arriving_out_of_order_move_the_clock_only_when_the_gap_fills() -> None:
    server = make_server()
    server.push(result(0, 1))

    assert server.clocks() == [0, 0]
    server.push(result(0, 0))
    assert server.clocks() == [2, 0]


def test_an_empty_last_batch_moves_the_clock_and_leaves_theta() -> None:
    server = make_server()
    theta = server.export()[1]

    stats = server.push(result(0, 0, samples=0))

    assert server.clocks() == [1, 0]
    assert stats.version == 0
    np.testing.assert_array_equal(server.export()[1], theta)


def test_a_push_reports_how_far_its_worker_was_ahead_of_the_slowest_when_it_read() -> None:
    server = make_server()
    server.read_theta(0, 0)  # both at clock 0
    first = server.push(result(0, 0))
    server.read_theta(0, 1)  # worker 0 at clock 1, worker 1 still at 0: one ahead
    server.read_theta(1, 0)
    second = server.push(result(0, 1))
    third = server.push(result(1, 0))

    assert [s.clock_lead for s in (first, second, third)] == [(0,), (1,), (0,)]


def test_bsp_servers_refuse_pushes_and_bad_pushes_are_refused() -> None:
    with pytest.raises(ValueError, match="push is for asp/ssp"):
        make_server("bsp").push(result(0, 0))
    with pytest.raises(ValueError, match=r"worker must be in \[0, 2\)"):
        make_server().push(result(2, 0))
    with pytest.raises(ValueError, match="must have 26 entries"):
        make_server().push(GradientResult(gradient=np.zeros(3, np.float32), samples=1, loss=0.0))
    with pytest.raises(ValueError, match="consistency must be one of"):
        make_server("gossip")


def test_a_compressed_push_is_decompressed_before_it_is_applied() -> None:
    server, plain = make_server(), make_server()
    g = np.linspace(-1, 1, P).astype(np.float32)
    compressed = GradientCompressor("fp16").compress(g)

    server.push(GradientResult(gradient=compressed, samples=2, loss=0.0))
    plain.push(GradientResult(gradient=g, samples=2, loss=0.0))

    np.testing.assert_allclose(server.export()[1], plain.export()[1], atol=1e-3)
    assert compressed.nbytes == P * 2


# --- shards without Ray ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_two_shards_update_theta_exactly_as_one_server(kind: str) -> None:
    optimizer = OptimizerConfig(kind=kind, learning_rate=0.1)
    whole = make_server("bsp", optimizer=optimizer)
    parts = [make_server("bsp", optimizer=optimizer, shard=(s, 2)) for s in range(2)]
    bounds = ParamLayout(SIZES).shard_bounds(2)
    rng = np.random.default_rng(0)
    for step in range(1, 4):
        grads = [rng.standard_normal(P).astype(np.float32) for _ in range(2)]
        stats, _ = whole.apply_gradients(
            *(GradientResult(gradient=g, samples=3, loss=1.0) for g in grads), step=step
        )
        shard_stats = [
            part.apply_gradients(
                *(GradientResult(gradient=g[lo:hi], samples=3, loss=1.0) for g in grads),
                step=step,
            )[0]
            for part, (lo, hi) in zip(parts, bounds, strict=True)
        ]
    joined = np.concatenate([part.export()[1] for part in parts])
    np.testing.assert_array_equal(joined, whole.export()[1])
    summed = np.sum([s.weight_squares for s in shard_stats], axis=0)
    np.testing.assert_allclose(np.sqrt(summed), stats.gradient_norms, rtol=1e-6)


def test_a_sharded_server_refuses_global_norm_clipping() -> None:
    optimizer = OptimizerConfig(kind="sgd", learning_rate=0.1, clip_norm=1.0)
    with pytest.raises(ValueError, match="needs the whole gradient"):
        make_server("bsp", optimizer=optimizer, shard=(0, 2))


# --- jobs on Ray ----------------------------------------------------------------------------


def run_job(name: str, **changes) -> tuple[JobRunner, list]:
    spec = spec_from_proto(spec_from_dict(digits_spec(**changes)))
    runner = JobRunner(name, spec, RunnerOptions(max_lead_s=None))  # polled only once it ended
    state = runner.run()
    update = runner.poll(0, 0.0)
    assert state is JobState.SUCCEEDED, update.reason
    return runner, update.points


def accuracy_on_test_split(runner: JobRunner) -> float:
    digits = load_dataset("digits")
    model = MLP(runner.spec.sizes, runner.spec.activations, runner.spec.loss)
    _, theta = join_exported(ray.get(runner.final_weights()))
    return model.evaluate(theta, digits.X_test, digits.y_test)["accuracy"]


# asp/ssp need the regularised model to clear 0.95 with a margin under a loaded host:
# 0.964-0.972 over seeds 3 and 4 with two jobs sharing the 2 cores (without dropout and
# label smoothing, 0.95-0.967 on a quiet host and once 0.908 under load).
TRAINING = {
    "layers": [
        {"units": 256, "activation": "relu", "dropout": 0.2},
        {"units": 10, "activation": "identity"},
    ],
    "label_smoothing": 0.1,
    "optimizer": {"kind": "adam", "learning_rate": 0.001},
    "batch_size": 48,
    "epochs": 20,
}
PLAIN = {
    "layers": [{"units": 128, "activation": "relu"}, {"units": 10, "activation": "identity"}],
    "optimizer": {"kind": "adam", "learning_rate": 0.003},
    "batch_size": 48,
    "epochs": 4,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode", [{"consistency": "asp"}, {"consistency": "ssp", "staleness": 1}], ids=["asp", "ssp"]
)
def test_asp_and_ssp_reach_95_percent_test_accuracy_on_digits(ray_session, mode: dict) -> None:
    runner, points = run_job(f"acc-{mode['consistency']}", workers=3, **TRAINING, **mode)

    accuracy = accuracy_on_test_split(runner)

    print(f"{mode}: test accuracy {accuracy:.4f}")
    assert accuracy >= 0.95
    assert [p.step for p in points] == list(range(1, len(points) + 1))
    assert max(p.staleness_max for p in points) >= 1  # the workers really ran apart
    assert all(p.staleness_mean <= p.staleness_max for p in points)


@pytest.mark.slow
@pytest.mark.parametrize("bound", [0, 1, 3])
def test_ssp_never_lets_a_worker_run_more_than_s_gradients_ahead(ray_session, bound) -> None:
    _, points = run_job(
        f"ssp-{bound}", workers=3, consistency="ssp", staleness=bound, steps=60, batch_size=30
    )

    assert len(points) == 60  # a point per round of 3 gradients: every gradient counted
    assert max(p.clock_lead_max for p in points) <= bound


@pytest.mark.slow
def test_asp_lets_workers_run_apart(ray_session) -> None:
    _, points = run_job("asp-apart", workers=2, consistency="asp", steps=40, batch_size=20)

    assert len(points) == 40
    assert max(p.clock_lead_max for p in points) >= 1  # never held back: a worker ran ahead


@pytest.mark.slow
@pytest.mark.parametrize(
    ("compression", "per_push"),
    [("none", 4 * 4810), ("fp16", 2 * 4810), ("topk", 49 * (4 + 4))],  # P = 4810; k = 49
)
def test_pushed_bytes_per_step_follow_the_compression(
    ray_session, compression: str, per_push: int
) -> None:
    extra = {"topk_fraction": 0.01} if compression == "topk" else {}
    _, points = run_job(
        f"bytes-{compression}", workers=2, compression=compression, steps=6, **extra
    )

    if compression == "none":  # colocated workers: each reads the other's half of g and θ
        assert {p.bytes_pushed for p in points} == {2 * per_push // 2}
        assert {p.bytes_pulled for p in points} == {2 * 4 * 4810 // 2}
    else:  # parameter-server actors: two whole pushes and two whole pulls
        assert {p.bytes_pushed for p in points} == {2 * per_push}
        assert {p.bytes_pulled for p in points} == {2 * 4 * 4810}
    assert all(p.compute_seconds > 0 for p in points)


@pytest.mark.slow
def test_topk_with_error_feedback_still_learns(ray_session) -> None:
    runner, points = run_job(
        "topk-learns",
        workers=2,
        compression="topk",
        topk_fraction=0.05,
        **PLAIN,
    )

    assert points[-1].loss < 0.5 * points[0].loss
    assert accuracy_on_test_split(runner) >= 0.85
