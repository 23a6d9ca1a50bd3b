#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine, cluster or provider downloads):
#
#   ./deploy/local/check-deploy.sh
#
# - terraform/ is `terraform fmt` clean;
# - the Compose file and Kubernetes manifests parse, and their cross-references hold
#   (selectors, named ports of probes and Services, Secret keys, the ConfigMap);
# - deploy/kubernetes builds with kustomize (`kubectl kustomize`, when kubectl is installed);
# - the Grafana dashboard is valid JSON and queries only metrics of the contract in
#   deploy/README.md;
# - with a built binary (IOTCORE_BIN, default target/debug/iotcore), the real configuration
#   loader accepts the ConfigMap's file and every IOTCORE_* variable of the Compose file and
#   the manifests: an unknown key would stop iotcore at start.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IOTCORE_ROOT"

failures=0
check() {
  local name="$1"
  shift
  if "$@"; then
    say "ok: $name"
  else
    say "FAILED: $name"
    failures=$((failures + 1))
  fi
}

command -v terraform >/dev/null || die "terraform not found (https://developer.hashicorp.com/terraform/install)"
command -v python3 >/dev/null || die "python3 not found"
if ! python3 -c 'import yaml' 2>/dev/null; then
  # python3 may not be Debian's, so try pip first.
  python3 -m pip install --quiet pyyaml || apt_install python3-yaml
fi

check "terraform fmt" terraform fmt -check -recursive -diff terraform

check "manifests, compose file and dashboard" python3 - <<'EOF'
import glob, json, re, sys
import yaml

errors = []
def err(message):
    errors.append(message)

# Kubernetes: every document well formed, and the references between them resolve.
docs = []
for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            err(f"{path}: a document without apiVersion and kind")
            continue
        if doc["kind"] != "Kustomization" and not (doc.get("metadata") or {}).get("name"):
            err(f"{path}: {doc['kind']} without metadata.name")
        docs.append((path, doc))

kustomization = next((d for _, d in docs if d["kind"] == "Kustomization"), None)
if kustomization is None:
    err("deploy/kubernetes: no kustomization.yaml")
else:
    for resource in kustomization.get("resources", []):
        if not glob.glob(f"deploy/kubernetes/{resource}"):
            err(f"kustomization.yaml: resource {resource} does not exist")

secrets = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Secret"}
configmaps = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "ConfigMap"}
pods = []  # (name, labels, named ports)
for path, doc in docs:
    if doc["kind"] not in ("Deployment", "Job"):
        continue
    name = doc["metadata"]["name"]
    template = doc["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    if doc["kind"] == "Deployment":
        selector = doc["spec"]["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            err(f"{path}: {name}: the selector does not match the pod template's labels")
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    ports = set()
    for container in spec["containers"]:
        ports |= {p["name"] for p in container.get("ports", []) if "name" in p}
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["key"] not in (secrets.get(ref["name"], {}).get("stringData") or {}):
                err(f"{path}: {name}: secret {ref['name']}/{ref['key']} is not in secrets.example.yaml")
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind) or {}
            for action in ("httpGet", "tcpSocket"):
                port = (probe.get(action) or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    err(f"{path}: {name}: {kind} uses port {port}, which the container does not name")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                err(f"{path}: {name}: volume mount {mount['name']} has no volume")
    for volume in volumes.values():
        cm = (volume.get("configMap") or {}).get("name")
        if cm and cm not in configmaps:
            err(f"{path}: {name}: ConfigMap {cm} is not defined")
        secret = (volume.get("secret") or {}).get("secretName")
        if secret and secret not in secrets:
            err(f"{path}: {name}: Secret {secret} is not in secrets.example.yaml")
    pods.append((name, labels, ports))

for path, doc in docs:
    kind, name, spec = doc["kind"], (doc.get("metadata") or {}).get("name"), doc.get("spec") or {}
    if kind == "Service":
        selected = [p for p in pods if all(p[1].get(k) == v for k, v in spec["selector"].items())]
        if not selected:
            err(f"{path}: Service {name} selects no pods")
        for port in spec.get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and any(target not in p[2] for p in selected):
                err(f"{path}: Service {name}: targetPort {target} is not a named container port")
    if kind in ("PodDisruptionBudget",):
        wanted = spec["selector"]["matchLabels"]
        if not any(all(p[1].get(k) == v for k, v in wanted.items()) for p in pods):
            err(f"{path}: PodDisruptionBudget {name} selects no pods")
    if kind == "HorizontalPodAutoscaler":
        target = spec["scaleTargetRef"]["name"]
        if not any(d["kind"] == "Deployment" and d["metadata"]["name"] == target for _, d in docs):
            err(f"{path}: HorizontalPodAutoscaler {name} scales unknown {target}")

# Compose: parses, and every depends_on names a service.
compose = yaml.safe_load(open("deploy/docker-compose.yml"))
services = compose.get("services") or {}
for name, service in services.items():
    for dependency in service.get("depends_on") or {}:
        if dependency not in services:
            err(f"docker-compose.yml: {name} depends on unknown service {dependency}")

# Grafana: valid JSON, unique panel ids, and only metrics of the contract.
contract = set(re.findall(r"^\| `(iotcore_[a-z_]+)`", open("deploy/README.md").read(), re.M))
if not contract:
    err("deploy/README.md: no metrics contract table found")
dashboard = json.load(open("deploy/grafana/iotcore.json"))
ids = [p["id"] for p in dashboard["panels"]]
if len(ids) != len(set(ids)):
    err("iotcore.json: duplicate panel ids")
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        for metric in re.findall(r"\biotcore_[a-z_]+", target["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            if metric not in contract and base not in contract:
                err(f"iotcore.json: panel '{panel['title']}' uses {metric}, not in the contract")

for message in errors:
    print(message, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

if command -v kubectl >/dev/null; then
  check "kubectl kustomize deploy/kubernetes" bash -c 'kubectl kustomize deploy/kubernetes >/dev/null'
else
  say "skipped: kustomize build (kubectl not installed)"
fi

# The real configuration loader, with only the variables under test and dummy secrets.
bin="${IOTCORE_BIN:-${CARGO_TARGET_DIR:-$IOTCORE_ROOT/target}/debug/iotcore}"
if [[ -x $bin ]]; then
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/iotcore-check-deploy.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  python3 - "$tmp" <<'EOF'
import re, sys
import yaml
out = sys.argv[1]
configmap = next(d for d in yaml.safe_load_all(open("deploy/kubernetes/configmap.yaml")) if d)
open(f"{out}/config.toml", "w").write(configmap["data"]["config.toml"])

def resolve(value):
    # ${NAME:-default} → default, ${NAME:?message} and ${NAME} → a dummy value.
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
    return re.sub(r"\$\{[A-Z_]+(:\?[^}]*)?\}", "dummy-value-at-least-32-bytes-long-xxxxxxxx", value)

compose = yaml.safe_load(open("deploy/docker-compose.yml"))
with open(f"{out}/compose.env", "w") as env:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("IOTCORE_"):
                env.write(f"{name}\t{key}={resolve(value)}\n")
with open(f"{out}/kubernetes.env", "w") as env:
    for path in ["api", "broker", "rules", "migrate-job"]:
        for doc in yaml.safe_load_all(open(f"deploy/kubernetes/{path}.yaml")):
            if not doc or doc.get("kind") not in ("Deployment", "Job"):
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for var in container.get("env", []):
                    if var["name"].startswith("IOTCORE_") and "value" in var:
                        value = var["value"].replace("/etc/iotcore/config.toml", f"{out}/config.toml")
                        env.write(f"{path}\t{var['name']}={value}\n")
EOF
  secret=IOTCORE_API_AUTH_HS256_SECRET=check-deploy-secret-of-at-least-32-bytes
  url=IOTCORE_DATABASE_URL=postgres://iotcore@db.invalid/iotcore
  print_config() { env -i PATH="$PATH" "$url" "$secret" "$@" "$bin" serve --print-config >/dev/null; }
  check "the ConfigMap's config.toml loads" print_config IOTCORE_CONFIG="$tmp/config.toml"
  for source in compose kubernetes; do
    while IFS= read -r unit; do
      mapfile -t vars < <(awk -F'\t' -v u="$unit" '$1 == u { print $2 }' "$tmp/$source.env")
      check "$source $unit: IOTCORE_* variables load" print_config "${vars[@]}"
    done < <(cut -f1 "$tmp/$source.env" | sort -u)
  done
  # The Terraform module sets some keys only when asked (TLS, NATS); name those the binary
  # does not know yet instead of failing, since builds without them are still deployable.
  while IFS= read -r var; do
    outcome="$(env -i PATH="$PATH" "$url" "$secret" "$var=x" "$bin" serve --print-config 2>&1 || true)"
    if [[ $outcome == *"no configuration key has this name"* ]]; then
      say "note: terraform sets $var, which this build does not know yet (only when enabled)"
    fi
  done < <(grep -oh 'IOTCORE_[A-Z0-9_]*[A-Z0-9]' terraform/*.tf | sort -u)
else
  say "skipped: configuration keys (no binary at $bin; build with cargo build -p iotcore)"
fi

if ((failures)); then
  die "$failures check(s) failed"
fi
say "deployment files: all checks passed"
