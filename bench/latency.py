"""Small-job latency: a spec (default examples/digits.yaml) from SubmitJob to weights on
disk on a warm `bptrain serve`, beside scikit-learn's MLPClassifier on the same data.

A real server process on an embedded Ray and a free port, a fresh storage directory.
One untimed job warms it (Ray's worker pool, imports); then each timed run measures

  submit→running   SubmitJob until the job's started_at (queue, runner, actors, mesh)
  training         then until the stream's final SUCCEEDED job (the steps, the last
                   checkpoint, weights saved)
  download         GetWeights streamed to a file
  total            SubmitJob until the weights file is written

and scores the downloaded weights on the digits test split with a plain NumPy forward
pass. scikit-learn's MLPClassifier (same hidden layers, adam, batch 64) fits the same
training rows in this process, timed with its own defaults (early stopping off).

    python bench/latency.py                 # 5 timed runs of examples/digits.yaml
    python bench/latency.py --runs 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bptrain import Client  # noqa: E402
from bptrain.v1 import training_pb2 as pb  # noqa: E402
from examples.demo import forward, start_server  # noqa: E402
from services.datasets import load_dataset  # noqa: E402

GOAL_TOTAL_S = 1.5
GOAL_ACCURACY = 0.97


def one_job(client: Client, spec: str, weights: Path) -> dict[str, float]:
    """Submit, follow the job's metrics stream to its end (as `bptrain submit --follow`
    does), download the weights; the phases' seconds. RUNNING is the job's own
    `started_at` (the server's clock: this host's)."""
    began_wall, began = time.time(), time.perf_counter()
    job = client.submit(spec)
    final = client.wait(job.job_id)
    finished = time.perf_counter()
    if final.state != pb.SUCCEEDED:
        raise RuntimeError(f"job {pb.JobState.Name(final.state)}: {final.reason}")
    client.download_weights(job.job_id, weights)
    done = time.perf_counter()
    to_running = final.started_at.ToNanoseconds() / 1e9 - began_wall
    return {
        "submit_to_running_s": to_running,
        "training_s": finished - began - to_running,
        "download_s": done - finished,
        "total_s": done - began,
        "steps": final.step,
    }


def accuracy(weights: Path) -> float:
    digits = load_dataset("digits")
    return float(np.mean(forward(weights, digits.X_test).argmax(axis=1) == digits.y_test))


def sklearn_row(spec: str) -> dict[str, float] | None:
    """MLPClassifier with the spec's hidden layers on the same rows; None without sklearn."""
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    import yaml

    with open(spec) as handle:
        fields = yaml.safe_load(handle)
    hidden = tuple(layer["units"] for layer in fields["layers"][:-1])
    digits = load_dataset("digits")
    model = MLPClassifier(hidden, batch_size=fields.get("batch_size", 64), random_state=0)
    began = time.perf_counter()
    model.fit(digits.X_train, digits.y_train)
    seconds = time.perf_counter() - began
    return {"fit_s": seconds, "accuracy": float(model.score(digits.X_test, digits.y_test))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "examples" / "digits.yaml"))
    parser.add_argument("--runs", type=int, default=5, help="timed jobs (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as directory:
        storage = Path(directory) / "storage"
        began = time.perf_counter()
        server, port = start_server(storage)
        try:
            with Client(f"127.0.0.1:{port}") as client:
                client.wait_until_serving()
                server_up = time.perf_counter() - began
                warm = one_job(client, args.spec, storage / "warm.npz")  # untimed
                runs = []
                for i in range(args.runs):
                    path = storage / f"run{i}.npz"
                    run = one_job(client, args.spec, path)
                    run["accuracy"] = accuracy(path)
                    runs.append(run)
        finally:
            server.terminate()
            server.wait(timeout=60)
    reference = sklearn_row(args.spec)
    print(f"server start (embedded Ray) {server_up:.2f} s; warm-up job {warm['total_s']:.2f} s")
    header = f"{'run':<8}{'submit→running':>16}{'training':>10}{'download':>10}{'total':>8}"
    header += f"{'steps':>7}{'test acc':>10}"
    print(header)
    print("-" * len(header))
    for i, run in enumerate(runs):
        print(
            f"{i + 1:<8}{run['submit_to_running_s']:>15.3f}s{run['training_s']:>9.3f}s"
            f"{run['download_s']:>9.3f}s{run['total_s']:>7.3f}s{run['steps']:>7}"
            f"{run['accuracy']:>10.4f}"
        )
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"{'median':<8}{median['submit_to_running_s']:>15.3f}s{median['training_s']:>9.3f}s"
        f"{median['download_s']:>9.3f}s{median['total_s']:>7.3f}s{median['steps']:>7.0f}"
        f"{median['accuracy']:>10.4f}"
    )
    if reference is not None:
        print(
            f"scikit-learn MLPClassifier fit: {reference['fit_s']:.3f} s, "
            f"test accuracy {reference['accuracy']:.4f}"
        )
    met_time, met_accuracy = median["total_s"] <= GOAL_TOTAL_S, median["accuracy"] >= GOAL_ACCURACY
    print(
        f"goal: total <= {GOAL_TOTAL_S} s: {median['total_s']:.3f} s "
        f"{'met' if met_time else 'NOT met'}; test accuracy >= {GOAL_ACCURACY}: "
        f"{median['accuracy']:.4f} {'met' if met_accuracy else 'NOT met'}"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": runs, "median": median, "sklearn": reference}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
