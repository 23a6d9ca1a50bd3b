#!/usr/bin/env python3
"""Creates what a benchmark of iotcore needs through its REST API, as a customer would.

    provision.py API_URL OPERATOR_TOKEN ADMIN_TOKEN_CMD DEVICES IDS_FILE

Makes a tenant, a registry, DEVICES devices each with a password, and a registry password.
Writes one "device_id password" line per device to IDS_FILE and prints
{"tenant": ..., "registry": ..., "registry_password": ...} on stdout. ADMIN_TOKEN_CMD is a
shell command that prints an admin token for the tenant id given as its last argument.
Standard library only.
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


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    api, operator, admin_cmd, count, ids_file = sys.argv[1:]
    count = int(count)
    if not 1 <= count <= MAX_DEVICES:
        sys.exit(f"DEVICES must be 1..{MAX_DEVICES}")
    tenant = call(api, operator, "POST", "/v1/tenants", {"name": "benchmark"})["id"]
    token = subprocess.run(
        admin_cmd + " " + tenant, shell=True, check=True, capture_output=True, text=True
    ).stdout.strip()
    # Mosquitto has no quotas: lift the tenant's so that the benchmark measures the data path
    # (the per-client and per-tenant broker limits are lifted by side-by-side.sh).
    lifted = 1_000_000_000
    call(api, operator, "PATCH", f"/v1/tenants/{tenant}/quotas", {
        "max_devices": MAX_DEVICES,
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
    with ThreadPoolExecutor(max_workers=4) as pool:
        devices = list(pool.map(device, range(count)))
    with open(ids_file, "w", encoding="utf-8") as out:
        for device_id, password in devices:
            out.write(f"{device_id} {password}\n")
    registry_password = call(api, token, "POST", f"/v1/registries/{registry}/passwords", {})["password"]
    print(json.dumps({"tenant": tenant, "registry": registry, "registry_password": registry_password}))


if __name__ == "__main__":
    main()
