#!/usr/bin/env python3
"""Creates what a benchmark of iotcore needs through its REST API, as a customer would.

    provision.py API_URL OPERATOR_TOKEN ADMIN_TOKEN_CMD DEVICES IDS_FILE [options]

Makes a tenant, a registry, DEVICES devices each with a password, and a registry password.
Writes one "device_id password" line per device to IDS_FILE and prints
{"tenant": ..., "registry": ..., "registry_password": ...} on stdout. ADMIN_TOKEN_CMD is a
shell command that prints an admin token for the tenant id given as its last argument.
Standard library only.

Options:
  --cert-devices N DIR  also a second registry with a CA created by the service and N
                        devices, each with a certificate the service generates (its
                        fingerprint registered on the device); writes DIR/{device_id}.pem
                        and .key, and DIR/ids with one device id a line; adds
                        "cert_registry" to the output
  --registry-cert DIR   also a CA created by the service for the (password) registry and a
                        certificate it issues to the registry itself (its fingerprint
                        registered on the registry), written to DIR/registry.pem and
                        DIR/registry.key
  --workers N           requests in flight at once (default 4)
"""

import json
import secrets
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

MAX_DEVICES = 100_000


def call(api, token, method, path, body):
    request = urllib.request.Request(
        api + path,
        method=method,
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def write_private(path, text):
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    api, operator, admin_cmd, count, ids_file = sys.argv[1:6]
    count = int(count)
    if not 1 <= count <= MAX_DEVICES:
        sys.exit(f"DEVICES must be 1..{MAX_DEVICES}")
    cert_count, cert_dir, registry_cert_dir, workers = 0, None, None, 4
    options = sys.argv[6:]
    while options:
        if options[0] == "--cert-devices" and len(options) >= 3:
            cert_count, cert_dir, options = int(options[1]), options[2], options[3:]
            if not 1 <= cert_count <= MAX_DEVICES:
                sys.exit(f"--cert-devices must be 1..{MAX_DEVICES}")
        elif options[0] == "--registry-cert" and len(options) >= 2:
            registry_cert_dir, options = options[1], options[2:]
        elif options[0] == "--workers" and len(options) >= 2:
            workers, options = int(options[1]), options[2:]
            if not 1 <= workers <= 64:
                sys.exit("--workers must be 1..64")
        else:
            sys.exit(__doc__)
    tenant = call(api, operator, "POST", "/v1/tenants", {"name": "benchmark"})["id"]
    token = subprocess.run(
        admin_cmd + " " + tenant, shell=True, check=True, capture_output=True, text=True
    ).stdout.strip()
    # Mosquitto has no quotas: lift the tenant's so that the benchmark measures the data path
    # (the per-client and per-tenant broker limits are lifted by side-by-side.sh).
    lifted = 1_000_000_000
    call(api, operator, "PATCH", f"/v1/tenants/{tenant}/quotas", {
        "max_devices": 2 * MAX_DEVICES,
        "max_connections": lifted,
        "max_messages_per_second": lifted,
        "max_bytes_per_second": lifted,
    })
    registry = call(api, token, "POST", "/v1/registries", {"name": "benchmark"})["id"]

    def device(i):
        created = call(api, token, "POST", f"/v1/registries/{registry}/devices", {"name": f"bench-{i}"})
        password = "bench-" + secrets.token_hex(12)
        call(api, token, "POST", f"/v1/devices/{created['id']}/passwords", {"password": password})
        return created["id"], password

    # Each password is hashed with argon2id by the API: a few at a time keeps both cores busy.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        devices = list(pool.map(device, range(count)))
    with open(ids_file, "w", encoding="utf-8") as out:
        for device_id, password in devices:
            out.write(f"{device_id} {password}\n")
    registry_password = call(api, token, "POST", f"/v1/registries/{registry}/passwords", {})["password"]
    result = {"tenant": tenant, "registry": registry, "registry_password": registry_password}

    if registry_cert_dir is not None:
        call(api, token, "POST", f"/v1/registries/{registry}/ca-certificates", {"generate": True})
        generated = call(api, token, "POST", f"/v1/registries/{registry}/certificates", {"generate": True})
        write_private(f"{registry_cert_dir}/registry.pem", generated["certificate_pem"])
        write_private(f"{registry_cert_dir}/registry.key", generated["private_key_pem"])

    if cert_count:
        cert_registry = call(api, token, "POST", "/v1/registries", {"name": "benchmark-certificates"})["id"]
        call(api, token, "POST", f"/v1/registries/{cert_registry}/ca-certificates", {"generate": True})

        def cert_device(i):
            created = call(api, token, "POST", f"/v1/registries/{cert_registry}/devices", {"name": f"cert-{i}"})
            generated = call(api, token, "POST", f"/v1/devices/{created['id']}/certificates", {"generate": True})
            write_private(f"{cert_dir}/{created['id']}.pem", generated["certificate_pem"])
            write_private(f"{cert_dir}/{created['id']}.key", generated["private_key_pem"])
            return created["id"]

        with ThreadPoolExecutor(max_workers=workers) as pool:
            cert_devices = list(pool.map(cert_device, range(cert_count)))
        with open(f"{cert_dir}/ids", "w", encoding="utf-8") as out:
            for device_id in cert_devices:
                out.write(f"{device_id}\n")
        result["cert_registry"] = cert_registry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
