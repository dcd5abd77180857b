"""The engine's options through the whole service: spec fields reach the workers and the
parameter server, and CheckGradients reports per-layer errors."""

from __future__ import annotations

import numpy as np
import pytest

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec

pytestmark = pytest.mark.slow


def test_a_job_with_every_engine_option_trains(client: Client) -> None:
    spec = digits_spec(
        layers=[
            {"units": 64, "activation": "gelu", "dropout": 0.1},
            {"units": 32, "activation": "leaky_relu"},
            {"units": 10, "activation": "identity"},
        ],
        optimizer={"kind": "adamw", "learning_rate": 0.003, "weight_decay": 0.01, "clip_norm": 5.0},
        schedule={"kind": "cosine", "warmup_steps": 5},
        l2=1e-4,
        label_smoothing=0.05,
        init="he",
        epochs=4,
    )
    final = client.submit(spec).wait()
    assert final.state == pb.SUCCEEDED, final.reason
    points = list(client.metrics(final.job_id))
    rates = [p.learning_rate for p in points]
    assert rates[0] == pytest.approx(0.003 / 5)  # warm-up: η·t/W at t = 1
    assert max(rates) == pytest.approx(0.003, rel=1e-6)
    assert rates[-1] < 0.05 * 0.003  # cosine decays to ~0 at the last step
    assert final.latest.validation_accuracy > 0.8
    assert final.spec.layers[0].dropout == pytest.approx(0.1)


def test_regression_with_huber_loss(client: Client) -> None:
    spec = {
        "dataset": {"name": "synthetic/regression", "features": 3, "samples": 600},
        "layers": [{"units": 16, "activation": "tanh"}, {"units": 1, "activation": "identity"}],
        "loss": "huber",
        "huber_delta": 0.5,
        "optimizer": {"kind": "adam", "learning_rate": 0.01},
        "epochs": 5,
    }
    final = client.submit(spec).wait()
    assert final.state == pb.SUCCEEDED, final.reason
    losses = [p.loss for p in client.metrics(final.job_id)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_check_gradients_reports_each_layer(client: Client) -> None:
    spec = digits_spec(
        layers=[
            {"units": 12, "activation": "elu"},
            {"units": 8, "activation": "softplus", "dropout": 0.2},
            {"units": 10, "activation": "identity"},
        ],
        l2=0.01,
    )
    report = client.check_gradients(spec)
    assert len(report.layer_errors) == 3
    assert report.passed and report.worst_error <= report.tolerance == 1e-7
    assert report.checked_entries > 0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"huber_delta": 2.0}, "huber_delta"),  # only for the huber loss
        ({"init": "xavier"}, "init"),
        ({"device": "tpu"}, "device"),
        ({"schedule": {"kind": "exponential"}}, "schedule.kind"),
        ({"optimizer": {"kind": "sgd", "clip_norm": -1}}, "optimizer.clip_norm"),
        (
            {"layers": [{"units": 10, "activation": "identity", "dropout": 0.5}]},
            "layers[0].dropout",
        ),
    ],
)
def test_bad_engine_options_name_their_field(client: Client, changes: dict, field: str) -> None:
    with pytest.raises(BptrainError) as caught:
        client.submit(digits_spec(**changes), validate_only=True)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.details.startswith(field + " "), caught.value.details
