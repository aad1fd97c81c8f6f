"""The tutorial peer: the webhook as most tutorials write it, Flask on gunicorn (one sync worker).

Run by the bench as `gunicorn --workers 1 --worker-class sync --certfile CERT --keyfile KEY
flask_peer:app`. It runs the very same mutation as the webhook (`webhook.admission.review.mutate_review`),
so only the framework differs: `request.get_json()` in, `jsonify(...)` out.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

from webhook.admission.review import mutate_review
from webhook.config import Settings

SETTINGS = Settings(no_registry=True)

app = Flask(__name__)


@app.post("/mutate")
def mutate() -> Response:
    review = request.get_json()
    return jsonify(mutate_review(review, SETTINGS))


@app.get("/healthz")
def healthz() -> str:
    return "ok"
