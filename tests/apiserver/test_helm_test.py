"""`helm test` itself, on the real API server: the chart installed by helm under a release of its
own, `helm test` creating the hook's objects in their order, and the suite standing in for the
kubelet (there is none here): when the hook pod appears, its own arguments run on the host with a
token of its own ServiceAccount, and the pod's phase is set from the exit code. Helm then reports
the result and deletes the hooks; a second run right after the first works too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.apiserver.cluster import Cluster, Doc, environ_without_ours, wait_for
from tests.apiserver.conftest import CHART, Release, wrong_service_port
from tests.apiserver.webhooks import ROOT, Serve, token_kubeconfig

pytestmark = pytest.mark.apiserver

NAME = "hooktest"
NAMESPACE = "concurrency-injector-hooktest"
HOOK = f"{NAME}-concurrency-injector-selftest"


def helm(release: Release, cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    env = {**environ_without_ours(), "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.Popen([str(release.helm), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def run_hook_pod(
    cluster: Cluster, directory: Path, *, failing: bool = False
) -> subprocess.CompletedProcess[str]:
    """What a kubelet would do with the hook pod: run its command, record how it ended.

    With `failing`, the command is run again until it fails: the API server may take a moment
    to see what the test broke.
    """
    found = wait_for(lambda: _pod(cluster), what=f"the hook pod {HOOK}")
    spec = found["spec"]
    token = cluster.kubectl(
        "create", "token", spec["serviceAccountName"], "-n", NAMESPACE).stdout.strip()  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    kubeconfig = token_kubeconfig(cluster.kubeconfig, token, directory / "kubeconfig")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "webhook", *spec["containers"][0]["args"],
             f"--kubeconfig={kubeconfig}"],
            cwd=ROOT, env=environ_without_ours(), capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip

    done: subprocess.CompletedProcess[str] = (
        wait_for(lambda: (d := run()).returncode != 0 and d, what="the hook to fail")
        if failing else run()
    )  # fmt: skip
    phase = "Succeeded" if done.returncode == 0 else "Failed"
    status = {"status": {"phase": phase}}
    cluster.kubectl("patch", "pod", HOOK, "-n", NAMESPACE, "--subresource", "status",
                    "--type", "merge", "-p", json.dumps(status))  # fmt: skip
    return done


def _pod(cluster: Cluster) -> Doc | None:
    got = cluster.kubectl("get", "pod", HOOK, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(got.stdout) if got.returncode == 0 else None


def _gone(cluster: Cluster, kind: str, namespace: str) -> Callable[[], bool]:
    return lambda: cluster.kubectl("get", kind, HOOK, "-n", namespace, check=False).returncode != 0


def test_helm_test_creates_runs_and_removes_the_hook(
    cluster: Cluster, release: Release, webhook: Serve, tmp_path: Path
) -> None:
    install = helm(release, cluster, "install", NAME, str(CHART), "-n", NAMESPACE,
                   "--create-namespace", "--set", "registry.enabled=false")  # fmt: skip
    out, err = install.communicate(timeout=300)
    assert install.returncode == 0, err
    try:
        for run in (1, 2):  # the second right after the first: its hooks were just deleted
            test = helm(release, cluster, "test", NAME, "-n", NAMESPACE, "--timeout", "3m")
            done = run_hook_pod(cluster, tmp_path / str(run))
            out, err = test.communicate(timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "selftest: passed: the webhook patched a dry-run pod" in done.stdout
            assert test.returncode == 0, out + err
            assert f"TEST SUITE:     {HOOK}" in out
            assert "Phase:          Succeeded" in out
            # hook-succeeded: every object of the test is deleted (the namespace may still be
            # terminating)
            for kind, where in (("pod", NAMESPACE), ("serviceaccount", NAMESPACE),
                                ("role", HOOK), ("rolebinding", HOOK)):  # fmt: skip
                wait_for(_gone(cluster, kind, where), what=f"{kind} {HOOK} deleted")
        # The webhook unreachable (a Service port that does not exist): the test fails, says
        # why, and its objects stay for a look.
        with wrong_service_port(cluster, release):
            test = helm(release, cluster, "test", NAME, "-n", NAMESPACE, "--timeout", "3m")
            done = run_hook_pod(cluster, tmp_path / "broken", failing=True)
        out, err = test.communicate(timeout=300)
        assert "came back unpatched" in done.stderr, done.stderr
        assert test.returncode != 0, out + err
        assert HOOK in err
        assert _pod(cluster) is not None  # hook-succeeded only: a failed test is kept
    finally:
        helm(release, cluster, "uninstall", NAME, "-n", NAMESPACE, "--wait").communicate(timeout=300)
        cluster.kubectl("delete", "namespace", NAMESPACE, HOOK, "--wait=false", check=False)
