# The smallest complete use of the module: an existing cluster (kubeconfig), the Secrets
# created beforehand, the image pushed to a registry the cluster can pull from.
#
#   kubectl create namespace iotcore
#   kubectl -n iotcore create secret generic iotcore-secrets \
#     --from-literal=database-url='postgres://iotcore:PASSWORD@db.example:5432/iotcore' \
#     --from-literal=jwt-secret="$(head -c 48 /dev/urandom | base64)"
#   kubectl -n iotcore create secret tls iotcore-mqtt-tls --cert=server.crt --key=server.key
#   terraform init && terraform apply -var image=registry.example.com/iotcore:1.0.0

terraform {
  required_version = ">= 1.5"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.23, < 3.0"
    }
  }
}

variable "image" {
  description = "The iotcore image to deploy."
  type        = string
}

variable "kubeconfig" {
  description = "Path of the kubeconfig file."
  type        = string
  default     = "~/.kube/config"
}

provider "kubernetes" {
  config_path = pathexpand(var.kubeconfig)
}

module "iotcore" {
  source = "../.."

  image            = var.image
  namespace        = "iotcore"
  create_namespace = false

  database_url_secret = { name = "iotcore-secrets" }
  jwt_secret          = { name = "iotcore-secrets" }
  tls_secret_name     = "iotcore-mqtt-tls"

  # With an image that has the mqtt.tls_* and cluster.nats_url keys (see the module README):
  # enable_tls_listener = true
  # plain_mqtt          = false
  # nats_url            = "nats://nats.nats.svc:4222"

  replicas = {
    api    = 2
    rules  = 2
    broker = 3
  }

  # Spans and metrics to an OpenTelemetry collector (OTLP over HTTP); omit to export none.
  # otlp_endpoint = "http://otel-collector.observability:4318"

  # Any configuration key as its IOTCORE_* variable.
  config = {
    IOTCORE_MQTT_MAX_CONNECTIONS = "50000"
  }

  mqtt_service_annotations = {
    "service.beta.kubernetes.io/aws-load-balancer-type"            = "external"
    "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type" = "ip"
    "service.beta.kubernetes.io/aws-load-balancer-scheme"          = "internet-facing"
  }
}

output "mqtts_endpoint" {
  value = module.iotcore.mqtts_endpoint
}

output "api_endpoint" {
  value = module.iotcore.api_endpoint
}
