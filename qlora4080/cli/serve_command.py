"""serve: an OpenAI-compatible HTTP server over a checkpoint."""

from __future__ import annotations

import typer

from .app import app
from .friendly import friendly_errors


@app.command()
@friendly_errors
def serve(
    checkpoint: str = typer.Argument(..., help="checkpoints/<run>, a model directory, or builtin:<name>"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 exposes it to the network "
                             "(then pass --api-key)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    api_key: str | None = typer.Option(None, "--api-key", envvar="QLORA4080_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' on /v1 routes."),
    model_name: str | None = typer.Option(None, "--model-name", help="The model id clients send (default: the "
                                          "checkpoint's folder name)."),
    batch_size: int = typer.Option(0, "--batch-size", min=0, help="Most answers decoded together (0: 8 on a GPU, "
                                   "1 on the CPU, where one at a time was measured faster)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for the model (default: torch's, "
                                       "one per physical core)."),
) -> None:
    """Serve a checkpoint with OpenAI's chat completions API (/v1/chat/completions, streaming or not; /v1/models;
    /health), in the checkpoint's own chat template. Any OpenAI client works: base_url http://127.0.0.1:8000/v1."""
    from ..hardware import detect
    from ..serve.run import serve as run_server

    chosen = batch_size or (8 if detect().is_cuda else 1)
    run_server(checkpoint, host=host, port=port, api_key=api_key, model_id=model_name, batch_size=chosen, threads=threads)
