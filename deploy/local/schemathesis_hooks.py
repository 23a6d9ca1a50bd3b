"""Schemathesis hooks for iotcore's control plane (loaded by schemathesis.sh).

A real client sends a fresh Idempotency-Key with every new request. Generated keys are
short and repeat (hypothesis favours minimal values), and the API answers a key reused
with another body with 422, as documented: left alone, most generated creations would
be refused for that alone. The key's semantics are tested in services/api/tests.
"""

import uuid

import schemathesis


@schemathesis.hook
def map_headers(context, headers):
    if headers and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    return headers
