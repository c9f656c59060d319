"""`qlora4080 serve`: an OpenAI-compatible HTTP server over a checkpoint.

    chat_request.py  a chat completion request checked field by field; OpenAI-shaped errors
    engine.py        the one thread that runs the model: a queue, answers decoded in batches
    app.py           the starlette routes: /v1/chat/completions (SSE or not), /v1/models, /health
    run.py           address checks, loading, uvicorn

The decoding itself (sampling, stop strings, several answers stepped together)
is qlora4080/decoding.py; the prompt is rendered by infer.prompt_ids, as chat does.
"""
