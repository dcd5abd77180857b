"""The one-line description of a metric point that `bptrain submit --follow` and `watch` print."""

from __future__ import annotations

from bptrain.progress import describe
from bptrain.v1 import training_pb2 as pb


def test_a_bsp_point_shows_loss_validation_and_throughput_without_staleness() -> None:
    point = pb.MetricPoint(
        step=3, loss=0.25, samples_per_second=1234.0, validation_loss=0.5, validation_accuracy=0.9
    )

    assert describe(point) == "loss 0.2500  val_loss 0.5000  val_acc 0.9000  1,234 samples/s"


def test_an_asp_point_shows_its_staleness() -> None:
    point = pb.MetricPoint(
        step=3, loss=0.25, samples_per_second=10.0, staleness_mean=1.5, staleness_max=3
    )

    assert describe(point) == "loss 0.2500  staleness 1.5 (max 3)  10 samples/s"


def test_an_ssp_point_shows_how_far_a_worker_ran_ahead() -> None:
    point = pb.MetricPoint(
        step=3, loss=0.25, samples_per_second=10.0, staleness_mean=1.0, staleness_max=2,
        clock_lead_max=1,
    )  # fmt: skip

    assert describe(point) == "loss 0.2500  staleness 1.0 (max 2)  lead 1  10 samples/s"
