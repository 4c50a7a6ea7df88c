"""Serving a trained model: a REST API (/v1/predict, /v1/model), /healthz, Prometheus /metrics and a web page.

FastAPI and uvicorn come with the optional extra: pip install 'attrnet[serve]'. Built on attrnet.inference:
the server gives the same probabilities as `attrnet predict`.

    from attrnet.serve.app import create_app             # the ASGI application, for tests or another server
    from attrnet.serve.server import serve                # load a model and run uvicorn (blocks)
"""
