#!/usr/bin/env python3
"""runc, minus the capabilities this host cannot grant.

Some VMs run with a capability bounding set that lacks a capability (CAP_SYS_RESOURCE, say).
Docker asks runc for every capability of a --privileged container, and runc then fails with
"unable to apply caps: operation not permitted"; kind runs every node privileged. This wrapper,
registered as dockerd's default runtime by hack/kind/engine.sh only on such a host, removes the
capabilities missing from its own bounding set from the OCI spec (`create`/`run --bundle DIR`
reads DIR/config.json; `exec --process FILE` reads FILE), then execs the real runc.
"""

import json
import os
import sys

RUNC = os.environ.get("CONCURRENCY_INJECTOR_REAL_RUNC", "/usr/sbin/runc")
CAPS = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]


def missing() -> set[str]:
    """The capabilities this process's bounding set lacks, as OCI names."""
    with open("/proc/self/status") as status:
        bounding = next(int(line.split()[1], 16) for line in status if line.startswith("CapBnd:"))
    return {f"CAP_{name}" for bit, name in enumerate(CAPS) if not bounding >> bit & 1}


def strip(path: str, process_key: bool) -> None:
    """Removes the missing capabilities from the spec (or process file) at PATH, in place."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except OSError:
        return
    process = spec.get("process", {}) if process_key else spec
    caps = process.get("capabilities") or {}
    gone = missing()
    for key, values in caps.items():
        if isinstance(values, list):
            caps[key] = [c for c in values if c not in gone]
    with open(path, "w") as f:
        json.dump(spec, f)


def main(argv: list[str]) -> None:
    for i, arg in enumerate(argv):
        if arg in ("create", "run"):
            bundle = "."
            for j, flag in enumerate(argv[i + 1 :], start=i + 1):
                if flag in ("--bundle", "-b") and j + 1 < len(argv):
                    bundle = argv[j + 1]
                elif flag.startswith("--bundle="):
                    bundle = flag.split("=", 1)[1]
            strip(os.path.join(bundle, "config.json"), process_key=True)
            break
        if arg == "exec":
            for j, flag in enumerate(argv[i + 1 :], start=i + 1):
                if flag in ("--process", "-p") and j + 1 < len(argv):
                    strip(argv[j + 1], process_key=False)
                elif flag.startswith("--process="):
                    strip(flag.split("=", 1)[1], process_key=False)
            break
    os.execv(RUNC, [RUNC, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
