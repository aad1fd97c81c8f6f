"""The floor: the least a Python webhook on uvicorn can do per review.

A raw ASGI app on the same uvicorn, TLS, event loop (uvloop) and HTTP parser (httptools) as the
webhook: it reads the body, parses it with the same JSON library (orjson) and answers a fixed
AdmissionReview (allowed, no patch) carrying the request's uid. No routing, no validation, no
mutation: whatever the webhook spends above this is the cost of the framework and the policy.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # lifespan is turned off; nothing else is expected
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/healthz":
        body = b"ok"
    else:
        review = orjson.loads(b"".join(chunks))
        body = orjson.dumps({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": True},
        })
    await send({"type": "http.response.start", "status": 200,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert-file", required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The webhook's own uvicorn settings (webhook/serving/server.py), with uvloop and httptools
    # spelled out where it says "auto" (which picks them when installed, as they are here).
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.cert_file,
                ssl_keyfile=args.key_file, loop="uvloop", http="httptools", lifespan="off",
                workers=1, timeout_keep_alive=120, log_config=None, access_log=False,
                server_header=False, proxy_headers=False)


if __name__ == "__main__":
    main()
