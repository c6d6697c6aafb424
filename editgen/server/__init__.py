"""`editgen serve`: an HTTP server over the engine core (FastAPI on uvicorn, or Ray
Serve). Needs the `serve` extra (`ray` for --ray).

    config.py     ServerConfig: every limit, validated
    schemas.py    request bodies (the OpenAPI schema)
    jobs.py       bodies -> Tickets with the engine's validation (the router)
    scheduler.py  the one thread that steps the EngineCore (the batcher), and the codec thread
    tickets.py    a request's events back to its handler
    audio_stream.py  WAV bytes; decoding a running request chunk by chunk
    captures.py   captured sources by id, bounded in bytes: in memory or in --capture-dir
    metrics.py    Prometheus metrics
    errors.py     the error contract (status and code per error)
    service.py    backend + scheduler + captures + metrics: one engine
    middleware.py the ASGI layers: request ids, hosts, drain, metrics; key, body limits, upload places
    app.py        the FastAPI app: routes, the error contract, answering
    uvicorn_server.py  `editgen serve` on uvicorn: drain before closing, header timeout, exit status
    ray_serve.py  the same app as a Ray Serve deployment
"""
