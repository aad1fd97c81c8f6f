"""The tutorial peer: the webhook as most tutorials write it, Flask on gunicorn (one sync worker).

Run by the bench as `gunicorn --workers 1 --worker-class sync --certfile CERT --keyfile KEY
flask_peer:app`. It runs the webhook's own admission handler (`AdmissionHandler.handle_now`: no
lookups, so no event loop is needed), so only the framework differs: `request.get_json()` in,
`jsonify(...)` out.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

from webhook.admission.handler import AdmissionHandler
from webhook.config import Settings

# The webhook's own handler, as the server builds it with registry lookups off.
HANDLER = AdmissionHandler(Settings(no_registry=True), record=False)

app = Flask(__name__)


@app.post("/mutate")
def mutate() -> Response:
    review = request.get_json()
    return jsonify(HANDLER.handle_now(review).review())


@app.get("/healthz")
def healthz() -> str:
    return "ok"
