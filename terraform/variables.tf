variable "namespace" {
  description = "Kubernetes namespace to deploy into."
  type        = string
  default     = "iotcore"
}

variable "create_namespace" {
  description = "Create the namespace (false when it exists already, with the Secrets in it)."
  type        = bool
  default     = true
}

variable "image" {
  description = "The iotcore container image, built from deploy/Dockerfile (registry/name:tag)."
  type        = string
}

variable "replicas" {
  description = "Replicas per service; each is also the autoscaler's minimum."
  type = object({
    api    = optional(number, 2)
    rules  = optional(number, 2)
    broker = optional(number, 2)
  })
  default = {}
}

variable "max_replicas" {
  description = "The autoscalers' maximum replicas per service."
  type = object({
    api    = optional(number, 6)
    rules  = optional(number, 8)
    broker = optional(number, 10)
  })
  default = {}
}

variable "database_url_secret" {
  description = "An existing Secret (in the namespace) holding the PostgreSQL URL: database.url."
  type = object({
    name = string
    key  = optional(string, "database-url")
  })
}

variable "jwt_secret" {
  description = "An existing Secret holding the control-plane token secret (api.auth.hs256_secret, at least 32 bytes)."
  type = object({
    name = string
    key  = optional(string, "jwt-secret")
  })
}

variable "tls_secret_name" {
  description = <<-EOT
    An existing kubernetes.io/tls Secret with the MQTT server certificate (tls.crt, tls.key),
    mounted at /etc/iotcore/tls. Set enable_tls_listener once the image has the mqtt.tls_* keys.
  EOT
  type        = string
  default     = null
}

variable "enable_tls_listener" {
  description = "Configure MQTT over TLS on 8883 from tls_secret_name (needs an image with the mqtt.tls_* keys)."
  type        = bool
  default     = false
}

variable "plain_mqtt" {
  description = "Listen for plain MQTT on 1883 inside the cluster (the only MQTT listener of builds without TLS)."
  type        = bool
  default     = true
}

variable "expose_plain_mqtt" {
  description = "Also publish 1883 on the load balancer. Development only: credentials travel in clear text."
  type        = bool
  default     = false
}

variable "nats_url" {
  description = "NATS URL for cross-node routing (cluster.nats_url, SPEC §8); null for none. Needs an image with that key."
  type        = string
  default     = null
}

variable "otlp_endpoint" {
  description = <<-EOT
    OTLP/HTTP collector base URL (telemetry.otlp_endpoint), such as
    "http://otel-collector.observability:4318": every pod sends its spans to /v1/traces and its
    metrics to /v1/metrics there. null exports nothing over OTLP (/metrics is always served).
  EOT
  type        = string
  default     = null
}

variable "otlp_interval_secs" {
  description = "How often metrics are exported over OTLP, in seconds (telemetry.otlp_interval_secs); only with otlp_endpoint."
  type        = number
  default     = 60

  validation {
    condition     = var.otlp_interval_secs >= 1
    error_message = "otlp_interval_secs must be at least 1."
  }
}

variable "config" {
  description = <<-EOT
    More configuration as IOTCORE_* variables, for example { IOTCORE_MQTT_MAX_CONNECTIONS = "50000" }.
    Every key and its variable: `iotcore serve --print-config` and the README's Operations section.
  EOT
  type        = map(string)
  default     = {}
}

variable "log_level" {
  description = "log.level, a tracing filter directive."
  type        = string
  default     = "info,sqlx::postgres::notice=warn"
}

variable "mqtt_service_annotations" {
  description = "Annotations of the MQTT LoadBalancer Service (cloud load balancer settings)."
  type        = map(string)
  default     = {}
}

variable "resources" {
  description = "Container resources per service."
  type = map(object({
    cpu_request    = string
    memory_request = string
    memory_limit   = string
  }))
  default = {
    api    = { cpu_request = "100m", memory_request = "128Mi", memory_limit = "512Mi" }
    rules  = { cpu_request = "100m", memory_request = "128Mi", memory_limit = "512Mi" }
    broker = { cpu_request = "250m", memory_request = "256Mi", memory_limit = "1Gi" }
  }
}

variable "run_migrations" {
  description = "Run `iotcore migrate` as a Job, and wait for it, before the services roll out."
  type        = bool
  default     = true
}
