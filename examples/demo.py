"""The demo behind `make demo`: a real server on an embedded Ray, a job over gRPC, its weights.

1. start `bptrain serve` as its own process on a free port (log in .bptrain/demo/server.log);
2. submit the spec over gRPC and show its live loss;
3. download the weights and score them on the digits test split with a plain numpy
   forward pass written here, independent of the training code's model.
The last line printed is `test_accuracy=0.xxxx`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bptrain import Client
from bptrain.progress import follow
from bptrain.v1 import training_pb2 as pb
from services.datasets import load_dataset

STORAGE = Path(".bptrain/demo")
START_TIMEOUT_S = 120

ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "identity": lambda z: z,
}


def forward(weights_path: Path, X: np.ndarray) -> np.ndarray:
    """a^l = σ_l(a^{l-1} W^l + b^l) with the file's own architecture; returns a^L."""
    with np.load(weights_path, allow_pickle=False) as archive:
        architecture = json.loads(str(archive["architecture"]))
        a = X.astype(np.float64)
        for l, activation in enumerate(architecture["activations"], start=1):
            a = ACTIVATIONS[activation](a @ archive[f"W{l}"] + archive[f"b{l}"])
    return a


def start_server(
    storage: Path = STORAGE, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, int]:
    """`bptrain serve` (with `extra` arguments) on a free port over an empty `storage`;
    (process, port)."""
    shutil.rmtree(storage, ignore_errors=True)  # each demo starts from an empty store
    storage.mkdir(parents=True, exist_ok=True)
    port_file = storage / "port"
    log = open(storage / "server.log", "w")  # noqa: SIM115 (lives as long as the server)
    command = [sys.executable, "-m", "bptrain.cli", "--log-level", "INFO", "serve"]
    command += ["--port", "0", "--metrics-port", "0", "--port-file", str(port_file)]
    command += ["--storage", str(storage), *extra]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.exists() or not port_file.read_text().strip():
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the server did not start; see {storage / 'server.log'}")
        time.sleep(0.1)
    return server, int(port_file.read_text())


def main(spec_path: str) -> int:
    print(f"starting bptrain serve (embedded Ray; log: {STORAGE / 'server.log'}) ...")
    server, port = start_server()
    try:
        with Client(f"127.0.0.1:{port}") as client:
            client.wait_until_serving()
            job = client.submit(spec_path)
            print(f"submitted {spec_path} as {job.job_id} to 127.0.0.1:{port}")
            final = follow(client, job.job_id)
            print(f"{final.job_id} {pb.JobState.Name(final.state)} after {final.step} steps")
            if final.state != pb.SUCCEEDED:
                print(f"reason: {final.reason}")
                return 1
            weights_path = STORAGE / "model.npz"
            digest = client.download_weights(job.job_id, weights_path)
            print(f"weights: {weights_path} (sha256 {digest[:16]}...)")
    finally:
        server.terminate()
        server.wait(timeout=60)
    digits = load_dataset("digits")
    predictions = forward(weights_path, digits.X_test).argmax(axis=1)
    accuracy = float(np.mean(predictions == digits.y_test))
    print(f"test_accuracy={accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/digits.yaml"))
