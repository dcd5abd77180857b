"""A sweep end to end (issue 14's goals): `examples/sweep.yaml` on a warm `bptrain serve`.

Starts `bptrain serve` on an embedded Ray (its own storage under .bptrain/bench-sweep),
runs one small job first (a warm server), then submits the sweep, follows it to its end
and reports: its wall time, each trial (parameters, state, rung, metric, steps), the
steps trained against those of every trial run in full, and the best trial's test
accuracy, scored on the digits test split by a NumPy forward pass written in
examples/demo.py (independent of the training code).

    python bench/sweep.py [SWEEP.yaml] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bptrain import Client  # noqa: E402
from bptrain.v1 import training_pb2 as pb  # noqa: E402
from examples.demo import forward, start_server  # noqa: E402
from services.datasets import load_dataset  # noqa: E402

STORAGE = ROOT / ".bptrain/bench-sweep"
GOALS = {"test_accuracy": 0.98, "step_share": 0.40, "seconds": 90.0}


def warm_up(client: Client) -> None:
    """One small job, so the sweep meets a warm server (a booted standby runner)."""
    job = client.submit(
        {
            "dataset": {"name": "digits"},
            "layers": [
                {"units": 16, "activation": "relu"},
                {"units": 10, "activation": "identity"},
            ],
            "epochs": 1,
            "workers": 1,
        }
    )
    client.wait(job.job_id)


def trial_rows(sweep) -> list[dict]:
    rows = []
    for trial in sweep.trials:
        values = {p.path: p.number if p.WhichOneof("value") == "number" else p.text
                  for p in trial.parameters}  # fmt: skip
        rows.append(
            {
                "trial": trial.number,
                "parameters": values,
                "state": pb.JobState.Name(trial.state),
                "stopped_early": trial.stopped_early,
                "rung": trial.rung,
                "metric": trial.metric if trial.HasField("metric") else None,
                "steps": trial.step,
                "total_steps": trial.total_steps,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "examples/sweep.yaml"))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    server, port = start_server(STORAGE)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            client.wait_until_serving()
            warm_up(client)
            load = os.getloadavg()[0]
            began = time.monotonic()
            sweep = client.submit_sweep(args.spec)
            final = sweep.wait()
            seconds = time.monotonic() - began
            best = sweep.best_trial() if final.HasField("best_trial") else None
            weights = STORAGE / "best.npz"
            if best is not None:
                sweep.best_weights(weights)
    finally:
        server.terminate()
        server.wait(timeout=60)
    digits = load_dataset("digits")
    accuracy = None
    if best is not None:
        predictions = forward(weights, digits.X_test).argmax(axis=1)
        accuracy = float(np.mean(predictions == digits.y_test))
    rows = trial_rows(final)
    share = final.steps_trained / final.steps_full if final.steps_full else float("nan")
    print(f"{'trial':>5} {'state':>9} {'rung':>4} {'metric':>7} {'steps':>11}  parameters")
    for row in rows:
        metric = f"{row['metric']:.4f}" if row["metric"] is not None else "-"
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in row["parameters"].items())  # fmt: skip
        state = row["state"] + ("*" if row["stopped_early"] else "")
        print(f"{row['trial']:>5} {state:>9} {row['rung']:>4} {metric:>7} "
              f"{row['steps']:>5}/{row['total_steps']:<5}  {shown}")  # fmt: skip
    print("(* stopped by ASHA)")
    print(f"sweep {final.sweep_id} {pb.JobState.Name(final.state)}: {final.reason}")
    print(f"steps trained {final.steps_trained} of {final.steps_full} for every trial in full: "
          f"{share:.1%} (goal <= {GOALS['step_share']:.0%})")  # fmt: skip
    print(f"best trial's test accuracy {accuracy} (goal >= {GOALS['test_accuracy']})")
    print(f"submit -> finished: {seconds:.1f} s (goal <= {GOALS['seconds']:.0f} s); "
          f"load average at the start {load:.2f}")  # fmt: skip
    met = (
        accuracy is not None
        and accuracy >= GOALS["test_accuracy"]
        and share <= GOALS["step_share"]
        and seconds <= GOALS["seconds"]
    )
    print("goals:", "met" if met else "NOT met")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "sweep_id": final.sweep_id,
                    "state": pb.JobState.Name(final.state),
                    "seconds": seconds,
                    "steps_trained": final.steps_trained,
                    "steps_full": final.steps_full,
                    "step_share": share,
                    "best_trial": best.number if best is not None else None,
                    "test_accuracy": accuracy,
                    "load_average": load,
                    "trials": rows,
                },
                indent=2,
            )
        )
    return 0 if final.state == pb.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
