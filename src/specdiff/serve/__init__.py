"""`specdiff serve`: an OpenAI-compatible server over one speculative decoder.

`worker.Worker` decodes one request at a time on its own thread behind a bounded queue;
`app.create_app` is the HTTP API (FastAPI, SSE streaming, Prometheus metrics).
"""
