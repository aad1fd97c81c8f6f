"""`serve` start-up, run as users run it: a bad file is exit 2 naming it, a port in use exit 3,
never a traceback; `serve --dev` says what it does and leaves nothing behind."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import (
    LOOPBACK,
    Pki,
    clean_env,
    cli_command,
    dev_server,
    free_port,
)
from webhook.certificates.authority import build_ca, build_leaf


def serve(
    *args: str, workers: int = 1, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), "serve", "--host", LOOPBACK, "--no-registry", "--log-format", "text",
         *args],
        env=clean_env(WEB_CONCURRENCY=str(workers), **(env or {})), capture_output=True,
        text=True, timeout=60, check=False,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("startup"))


def bad_files(pki: Pki, tmp: Path) -> dict[str, tuple[Path, Path, str]]:
    garbage = tmp / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other = build_leaf(build_ca("other-ca"), ["localhost"])
    other_key = tmp / "other.key"
    other_key.write_bytes(other.key_pem)
    missing = tmp / "missing.crt"
    return {
        "missing-cert": (missing, pki.key_file,
                         f"--cert-file {missing}: cannot read it: No such file or directory"),
        "missing-key": (pki.cert_file, missing,
                        f"--key-file {missing}: cannot read it: No such file or directory"),
        "garbage-cert": (garbage, pki.key_file, f"--cert-file {garbage}: not a PEM certificate"),
        "garbage-key": (pki.cert_file, garbage,
                        f"--key-file {garbage}: not an unencrypted PEM private key"),
        "other-key": (pki.cert_file, other_key,
                      f"--key-file {other_key} does not match --cert-file {pki.cert_file}"),
    }


CASES = ["missing-cert", "missing-key", "garbage-cert", "garbage-key", "other-key"]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_a_bad_certificate_or_key_file_exits_2_naming_it(
    pki: Pki, tmp_path: Path, case: str, workers: int
) -> None:
    cert, key, message = bad_files(pki, tmp_path)[case]
    done = serve("--cert-file", str(cert), "--key-file", str(key), "--port", str(free_port()),
                 workers=workers)
    assert done.returncode == 2, done
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_exits_3_with_a_message(pki: Pki, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve("--cert-file", str(pki.cert_file), "--key-file", str(pki.key_file),
                     "--port", str(port), workers=workers)
    assert done.returncode == 3, done
    assert f"cannot listen on {LOOPBACK}:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("kubeconfig", "code", "message"),
    [(None, 3, "CONCURRENCY_INJECTOR_READ_CONFIGMAPS=true needs the in-cluster service account"),
     ("/nonexistent/kubeconfig", 2,
      "CONCURRENCY_INJECTOR_READ_CONFIGMAPS=true: CONCURRENCY_INJECTOR_KUBECONFIG=/nonexistent")],
    ids=["no-service-account", "missing-kubeconfig"],
)
def test_in_cluster_features_outside_a_cluster_exit_with_a_message(
    pki: Pki, kubeconfig: str | None, code: int, message: str
) -> None:
    """Outside a cluster is the environment (3); a kubeconfig file that is not there, input (2)."""
    extra = {"CONCURRENCY_INJECTOR_READ_CONFIGMAPS": "true"}
    if kubeconfig:
        extra["CONCURRENCY_INJECTOR_KUBECONFIG"] = kubeconfig
    done = serve("--cert-file", str(pki.cert_file), "--key-file", str(pki.key_file),
                 "--port", str(free_port()), env=extra)
    assert done.returncode == code, done
    assert message in done.stderr
    assert "Traceback" not in done.stderr


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
SELF_MANAGED = {
    "CONCURRENCY_INJECTOR_TLS_SELF_MANAGED": "true",
    "CONCURRENCY_INJECTOR_NAMESPACE": "ci",
    "CONCURRENCY_INJECTOR_TLS_SECRET": "ci-tls",
    "CONCURRENCY_INJECTOR_WEBHOOK_CONFIG": "ci-webhook",
    "CONCURRENCY_INJECTOR_SERVICE_NAME": "ci",
}


@pytest.mark.parametrize(
    ("missing", "code", "message"),
    [(None, 3, "self-managed TLS (Secret ci/ci-tls, MutatingWebhookConfiguration ci-webhook): "
               "cannot reach the API server"),
     ("CONCURRENCY_INJECTOR_NAMESPACE", 2,
      "self-managed TLS needs CONCURRENCY_INJECTOR_NAMESPACE")],
    ids=["api-server-unreachable", "setting-missing"],
)
def test_self_managed_tls_that_cannot_start_exits_with_a_message(
    tmp_path: Path, missing: str | None, code: int, message: str
) -> None:
    """A setting it needs is input (2); an API server it cannot reach, the environment (3)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(port=free_port()))  # nothing listens there
    extra = {**SELF_MANAGED, "CONCURRENCY_INJECTOR_KUBECONFIG": str(kubeconfig)}
    if missing:
        del extra[missing]
    done = serve("--cert-file", str(tmp_path / "tls.crt"), "--key-file", str(tmp_path / "tls.key"),
                 "--port", str(free_port()), env=extra)
    assert done.returncode == code, done
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# --- serve --dev ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_dev_removes_its_files_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    with dev_server(tmp_path) as dev:
        printed = dev.printed
        directory = dev.printed_path("CA certificate").parent
        assert f"listens on:      127.0.0.1:{dev.port} (loopback only)" in printed
        assert "registry:        lookups off" in printed
        assert sorted(p.name for p in directory.iterdir()) == [
            "ca.crt", "review.json", "tls.crt", "tls.key"]
        dev.proc.send_signal(sig)
        assert dev.proc.wait(30) == 0, dev.err.read_text()
        assert not directory.exists()
        assert "Traceback" not in dev.err.read_text()


def test_serve_dev_binds_loopback_only_and_makes_no_registry_lookups(tmp_path: Path) -> None:
    """What the start-up message says is what the settings are."""
    script = (
        "import argparse, os\n"
        "from webhook.cli import apply_flags, build_parser\n"
        "from webhook.config import Settings\n"
        "from webhook.serving import server\n"
        "args = build_parser().parse_args(['serve', '--dev', '--port', '1'])\n"
        "server.prepare_dev(args, os.environ)\n"
        "apply_flags(args, os.environ)\n"
        "s = Settings.from_env()\n"
        "print(s.host, s.no_registry)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_env(CONCURRENCY_INJECTOR_HOST="0.0.0.0", CONCURRENCY_INJECTOR_NO_REGISTRY="false"),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "127.0.0.1 True"
