"""The kopf peer: the same mutation served by kopf's admission webhook server (kopf.WebhookServer).

kopf is the usual Python choice for operators and their webhooks. Its webhook server is aiohttp
over TLS, with the review decoded by the standard `json` module; a handler receives the object
and a merge-patch, and kopf diffs the result into the JSON Patch it answers with. The handler
here calls the webhook's own admission handler (`AdmissionHandler.handle`) and hands its patch
to kopf as a body transformation (`patch.fns`), so the policy is identical and only the
framework differs.

kopf asks the Kubernetes API for discovery at start-up. FAKE API, for this peer only: a
minimal discovery endpoint (pods and namespaces in core/v1, no groups) on 127.0.0.1, served
from a thread in this process; kopf runs standalone and clusterwide with scanning off, so after
start-up nothing but the webhook port is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonpatch
import kopf

from webhook.admission.handler import AdmissionHandler
from webhook.config import Settings

# The webhook's own handler, as the server builds it with registry lookups off.
HANDLER = AdmissionHandler(Settings(no_registry=True), record=False)

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
DISCOVERY: dict[str, Any] = {
    "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0-bench-fake"},
    "/api": {"kind": "APIVersions", "versions": ["v1"]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {
        "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
             "verbs": VERBS, "shortNames": ["po"]},
            {"name": "namespaces", "singularName": "namespace", "namespaced": False,
             "kind": "Namespace", "verbs": VERBS, "shortNames": ["ns"]},
            {"name": "events", "singularName": "event", "namespaced": True, "kind": "Event",
             "verbs": VERBS, "shortNames": ["ev"]},
        ],
    },
}


class FakeDiscovery(BaseHTTPRequestHandler):
    """FAKE Kubernetes API: answers discovery GETs only; anything else is a logged 404."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        found = DISCOVERY.get(path)
        if found is None:
            print(f"fake-api: 404 {self.command} {self.path}", file=sys.stderr)
            found = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "reason": "NotFound", "code": 404}
        body = json.dumps(found).encode()
        self.send_response(200 if found.get("kind") != "Status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def start_fake_api() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDiscovery)
    threading.Thread(target=server.serve_forever, name="fake-api", daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@kopf.on.mutate("pods", id="mutate", operations=["CREATE"])
async def mutate(
    body: kopf.Body, patch: kopf.Patch, warnings: list[str], userinfo: kopf.UserInfo,
    **_: Any,
) -> None:
    """Rebuild the review kopf took apart, run the webhook's mutation, hand kopf its patch."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "kopf-peer",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": body.metadata.namespace,
            "userInfo": dict(userinfo),
            "object": dict(body),
        },
    }
    answer = await HANDLER.handle(review)
    warnings.extend(answer.warnings)
    if answer.patch:
        ops = answer.patch
        patch.fns.append(lambda raw: jsonpatch.apply_patch(raw, ops, in_place=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert-file", required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    api_url = start_fake_api()

    @kopf.on.login()
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api_url, insecure=True)

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = kopf.WebhookServer(
            addr=args.host, port=args.port, certfile=args.cert_file, pkeyfile=args.key_file)
        settings.admission.managed = None  # no webhook configuration to write
        settings.scanning.disabled = True
        settings.posting.enabled = False
        logging.getLogger().setLevel(logging.WARNING)

    kopf.run(standalone=True, clusterwide=True)


if __name__ == "__main__":
    main()
