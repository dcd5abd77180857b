"""bptrain's client side: the SDK (`Client`), the CLI and the generated API stubs."""

from bptrain.client import BptrainError, Client, JobHandle
from bptrain.model import Model
from bptrain.specfile import SpecFileError, load_spec_file

__all__ = ["BptrainError", "Client", "JobHandle", "Model", "SpecFileError", "load_spec_file"]
