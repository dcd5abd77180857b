"""What every `bptrain` command shares: --server, --output, and errors as one line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import click

from bptrain.client import DEFAULT_SERVER, BptrainError, Client
from bptrain.specfile import SpecFileError

server_option = click.option(
    "--server",
    envvar="BPTRAIN_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="host:port of the bptrain API ($BPTRAIN_SERVER).",
)
output_option = click.option(
    "--output", "-O", type=click.Choice(["table", "json"]), default="table", show_default=True
)
reconnect_option = click.option(
    "--reconnect-for",
    "reconnect_for",
    type=click.FloatRange(min=0),
    default=None,
    help="While following: give up after this many seconds without an answer "
    "(default: keep reconnecting until the job, or sweep, ends).",
)
weights_out_option = click.option(
    "-o", "--out", "path", default="model.npz", show_default=True, type=click.Path(path_type=Path)
)
weights_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["npz", "safetensors", "onnx"]),
    default=None,
    help="Default: from the output file's suffix, else npz.",
)


def weights_format(path: Path, fmt: str | None) -> str:
    """--format, else the output file's suffix when it names a format, else npz."""
    suffix = path.suffix.lstrip(".").lower()
    return fmt or (suffix if suffix in ("npz", "safetensors", "onnx") else "npz")


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@contextlib.contextmanager
def connected(server: str) -> Iterator[Client]:
    """A client of `server`; a client-side error inside (a status from the server, a
    bad spec file, a file that cannot be written) is one line on stderr and exit 1."""
    try:
        with Client(server) as client:
            yield client
    except (BptrainError, SpecFileError, OSError) as error:
        fail(str(error))
