"""`python -m services`: the API server (services/cli.py)."""

from services.cli import main

main(prog_name="bptrain-server")
