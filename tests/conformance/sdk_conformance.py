#!/usr/bin/env python3
"""Drive openshell-sim with the official OpenShell Python SDK (openshell==0.1.5).

The SDK is a client nobody here wrote: if it can run the basic lifecycle
against our simulator over mTLS, the simulator (and the protos it is built
from) speak the same protocol as real gateways.

Usage: sdk_conformance.py HOST:PORT TLS_DIR
"""
import pathlib
import sys
import time

import grpc
from openshell import sandbox as sdk


def main(endpoint, tls_dir):
    tls_dir = pathlib.Path(tls_dir)
    tls = sdk.TlsConfig(
        ca_path=tls_dir / "ca.crt",
        cert_path=tls_dir / "client.crt",
        key_path=tls_dir / "client.key",
    )
    client = sdk.SandboxClient(endpoint, tls=tls, timeout=10.0)
    checks = 0

    def check(cond, what):
        nonlocal checks
        if not cond:
            raise SystemExit(f"FAILED: {what}")
        checks += 1
        print(f"ok: {what}")

    health = client.health()
    check(health.status == 1 and health.version, f"health is HEALTHY with version {health.version!r}")

    ref = client.create(workspace="default", name="sdk-conformance", labels={"suite": "sdk"})
    check(ref.id != "", f"create returned id {ref.id}")

    ready = client.wait_ready("sdk-conformance", workspace="default", timeout_seconds=30)
    check(ready.phase == 2, "sandbox reached READY")

    names = [s.name for s in client.list_all(workspace="default")]
    check("sdk-conformance" in names, f"list shows the sandbox ({len(names)} listed)")

    result = client.exec("sdk-conformance", ["echo", "hi"], workspace="default")
    check(result.exit_code == 0 and result.stdout == "hi\n", f"exec echo hi -> {result.stdout!r}, exit {result.exit_code}")

    stopped = client.stop("sdk-conformance", workspace="default")
    check(stopped.phase in (6, 7), "stop accepted")
    client.wait_stopped("sdk-conformance", workspace="default", timeout_seconds=30)
    check(True, "sandbox reached STOPPED")

    client.start("sdk-conformance", workspace="default")
    client.wait_ready("sdk-conformance", workspace="default", timeout_seconds=30)
    check(True, "sandbox started and is READY again")

    deletion = client.delete("sdk-conformance", workspace="default")
    check(int(deletion.outcome) in (1, 2), f"delete outcome {deletion.outcome!r}")
    client.wait_deleted("sdk-conformance", workspace="default", timeout_seconds=30)

    try:
        client.get("sdk-conformance", workspace="default")
        check(False, "get after delete fails")
    except grpc.RpcError as exc:  # the SDK's GatewayError is an RpcError
        check(exc.code() == grpc.StatusCode.NOT_FOUND, f"get after delete fails with {exc.code()}")

    client.close()
    print(f"{checks} passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
