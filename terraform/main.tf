locals {
  namespace = var.create_namespace ? kubernetes_namespace_v1.this[0].metadata[0].name : var.namespace

  labels = {
    "app.kubernetes.io/name"       = "iotcore"
    "app.kubernetes.io/part-of"    = "iotcore"
    "app.kubernetes.io/managed-by" = "terraform"
  }

  tls_enabled = var.enable_tls_listener && var.tls_secret_name != null

  # Plain values; the two secrets are added from their Secrets below. Values set here win over
  # var.config so that the module's wiring (migrations, listeners) stays consistent.
  common_env = merge(
    var.config,
    {
      IOTCORE_PROFILE                   = "production"
      IOTCORE_DATABASE_MIGRATE_ON_START = "false"
      IOTCORE_API_LISTEN                = "0.0.0.0:8080"
      IOTCORE_LOG_FORMAT                = "json"
      IOTCORE_LOG_LEVEL                 = var.log_level
    },
    # Spans and metrics over OTLP/HTTP from every pod, when a collector is given.
    var.otlp_endpoint == null ? {} : {
      IOTCORE_TELEMETRY_OTLP_ENDPOINT      = var.otlp_endpoint
      IOTCORE_TELEMETRY_OTLP_INTERVAL_SECS = tostring(var.otlp_interval_secs)
    },
  )

  broker_env = merge(
    local.common_env,
    # An empty value turns plain MQTT off (the production profile's default).
    { IOTCORE_MQTT_TCP_LISTEN = var.plain_mqtt ? "0.0.0.0:1883" : "" },
    local.tls_enabled ? {
      IOTCORE_MQTT_TLS_LISTEN    = "0.0.0.0:8883"
      IOTCORE_MQTT_TLS_CERT_FILE = "/etc/iotcore/tls/tls.crt"
      IOTCORE_MQTT_TLS_KEY_FILE  = "/etc/iotcore/tls/tls.key"
    } : {},
    var.nats_url == null ? {} : { IOTCORE_CLUSTER_NATS_URL = var.nats_url },
  )

  # What differs between the three services.
  services = {
    api = {
      env      = local.common_env
      ports    = { http = 8080 }
      probe    = "http"
      grace    = 30
      pre_stop = 5
    }
    rules = {
      env      = local.common_env
      ports    = {}
      probe    = "none"
      grace    = 30
      pre_stop = 0
    }
    broker = {
      env      = local.broker_env
      ports    = { mqtt = 1883, mqtts = 8883 }
      probe    = "tcp"
      grace    = 45
      pre_stop = 10
    }
  }

  # `serve --only broker` serves MQTT only and `--only rules` no port at all (see
  # deploy/README.md): brokers get a TCP probe on the listener they have, rules none.
  broker_probe_port = var.plain_mqtt ? "mqtt" : "mqtts"
}

resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name = var.namespace
    labels = {
      "pod-security.kubernetes.io/enforce" = "restricted"
    }
  }
}

resource "kubernetes_service_account_v1" "iotcore" {
  metadata {
    name      = "iotcore"
    namespace = local.namespace
    labels    = local.labels
  }
  # iotcore never calls the Kubernetes API.
  automount_service_account_token = false
}

resource "kubernetes_job_v1" "migrate" {
  count = var.run_migrations ? 1 : 0

  metadata {
    # A new name per image, so an upgrade runs the new image's migrations.
    name      = "iotcore-migrate-${substr(sha256(var.image), 0, 10)}"
    namespace = local.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/component" = "migrate" })
  }

  spec {
    backoff_limit = 6

    template {
      metadata {
        labels = merge(local.labels, { "app.kubernetes.io/component" = "migrate" })
      }

      spec {
        service_account_name            = kubernetes_service_account_v1.iotcore.metadata[0].name
        automount_service_account_token = false
        restart_policy                  = "OnFailure"

        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          name  = "migrate"
          image = var.image
          args  = ["migrate"]

          dynamic "env" {
            for_each = local.common_env
            content {
              name  = env.key
              value = env.value
            }
          }
          env {
            name = "IOTCORE_DATABASE_URL"
            value_from {
              secret_key_ref {
                name = var.database_url_secret.name
                key  = var.database_url_secret.key
              }
            }
          }
          # `migrate` validates the whole configuration, token secret included.
          env {
            name = "IOTCORE_API_AUTH_HS256_SECRET"
            value_from {
              secret_key_ref {
                name = var.jwt_secret.name
                key  = var.jwt_secret.key
              }
            }
          }

          resources {
            requests = { cpu = "50m", memory = "64Mi" }
            limits   = { memory = "256Mi" }
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }
      }
    }
  }

  wait_for_completion = true
  timeouts {
    create = "10m"
    update = "10m"
  }
}

resource "kubernetes_deployment_v1" "service" {
  for_each = local.services

  metadata {
    name      = "iotcore-${each.key}"
    namespace = local.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/component" = each.key })
  }

  spec {
    replicas = var.replicas[each.key]

    selector {
      match_labels = {
        "app.kubernetes.io/name"      = "iotcore"
        "app.kubernetes.io/component" = each.key
      }
    }

    strategy {
      type = "RollingUpdate"
      rolling_update {
        max_surge       = "1"
        max_unavailable = "0"
      }
    }

    template {
      metadata {
        labels = merge(local.labels, { "app.kubernetes.io/component" = each.key })
      }

      spec {
        service_account_name             = kubernetes_service_account_v1.iotcore.metadata[0].name
        automount_service_account_token  = false
        termination_grace_period_seconds = each.value.grace

        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
          fs_group        = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        topology_spread_constraint {
          max_skew           = 1
          topology_key       = "kubernetes.io/hostname"
          when_unsatisfiable = "ScheduleAnyway"
          label_selector {
            match_labels = {
              "app.kubernetes.io/name"      = "iotcore"
              "app.kubernetes.io/component" = each.key
            }
          }
        }

        container {
          name  = each.key
          image = var.image
          args  = ["serve", "--only", each.key, "--no-migrate"]

          dynamic "port" {
            for_each = each.value.ports
            content {
              name           = port.key
              container_port = port.value
              protocol       = "TCP"
            }
          }

          dynamic "env" {
            for_each = each.value.env
            content {
              name  = env.key
              value = env.value
            }
          }
          env {
            name = "IOTCORE_DATABASE_URL"
            value_from {
              secret_key_ref {
                name = var.database_url_secret.name
                key  = var.database_url_secret.key
              }
            }
          }
          env {
            name = "IOTCORE_API_AUTH_HS256_SECRET"
            value_from {
              secret_key_ref {
                name = var.jwt_secret.name
                key  = var.jwt_secret.key
              }
            }
          }

          # api: /healthz says the process serves HTTP, /readyz also that PostgreSQL answers.
          dynamic "liveness_probe" {
            for_each = each.value.probe == "http" ? [1] : []
            content {
              http_get {
                path = "/healthz"
                port = "http"
              }
              period_seconds    = 10
              timeout_seconds   = 3
              failure_threshold = 3
            }
          }
          dynamic "readiness_probe" {
            for_each = each.value.probe == "http" ? [1] : []
            content {
              http_get {
                path = "/readyz"
                port = "http"
              }
              period_seconds    = 5
              timeout_seconds   = 3
              failure_threshold = 2
            }
          }
          dynamic "liveness_probe" {
            for_each = each.value.probe == "tcp" ? [1] : []
            content {
              tcp_socket {
                port = local.broker_probe_port
              }
              period_seconds    = 10
              timeout_seconds   = 3
              failure_threshold = 3
            }
          }
          dynamic "readiness_probe" {
            for_each = each.value.probe == "tcp" ? [1] : []
            content {
              tcp_socket {
                port = local.broker_probe_port
              }
              period_seconds    = 5
              timeout_seconds   = 3
              failure_threshold = 2
            }
          }

          dynamic "lifecycle" {
            for_each = each.value.pre_stop > 0 ? [1] : []
            content {
              # Endpoints and load balancers drop the pod asynchronously; keep serving meanwhile.
              pre_stop {
                exec {
                  command = ["sleep", tostring(each.value.pre_stop)]
                }
              }
            }
          }

          resources {
            requests = {
              cpu    = var.resources[each.key].cpu_request
              memory = var.resources[each.key].memory_request
            }
            limits = {
              memory = var.resources[each.key].memory_limit
            }
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }

          dynamic "volume_mount" {
            for_each = each.key == "broker" && var.tls_secret_name != null ? [1] : []
            content {
              name       = "mqtt-tls"
              mount_path = "/etc/iotcore/tls"
              read_only  = true
            }
          }
        }

        dynamic "volume" {
          for_each = each.key == "broker" && var.tls_secret_name != null ? [1] : []
          content {
            name = "mqtt-tls"
            secret {
              secret_name  = var.tls_secret_name
              default_mode = "0440"
            }
          }
        }
      }
    }
  }

  # HPAs own the replica count after the first apply.
  lifecycle {
    ignore_changes = [spec[0].replicas]
  }

  depends_on = [kubernetes_job_v1.migrate]
}

resource "kubernetes_service_v1" "api" {
  metadata {
    name      = "iotcore-api"
    namespace = local.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/component" = "api" })
  }
  spec {
    type = "ClusterIP"
    selector = {
      "app.kubernetes.io/name"      = "iotcore"
      "app.kubernetes.io/component" = "api"
    }
    port {
      name        = "http"
      port        = 8080
      target_port = "http"
    }
  }
}

# The public MQTT endpoint: a TCP load balancer; TLS passes through to the brokers, which need
# the client certificate for X.509 device authentication.
resource "kubernetes_service_v1" "mqtt" {
  metadata {
    name        = "iotcore-mqtt"
    namespace   = local.namespace
    labels      = merge(local.labels, { "app.kubernetes.io/component" = "broker" })
    annotations = var.mqtt_service_annotations
  }
  spec {
    type                    = "LoadBalancer"
    external_traffic_policy = "Local"
    selector = {
      "app.kubernetes.io/name"      = "iotcore"
      "app.kubernetes.io/component" = "broker"
    }
    port {
      name        = "mqtts"
      port        = 8883
      target_port = "mqtts"
    }
    dynamic "port" {
      for_each = var.expose_plain_mqtt ? [1] : []
      content {
        name        = "mqtt"
        port        = 1883
        target_port = "mqtt"
      }
    }
  }
}

resource "kubernetes_service_v1" "mqtt_internal" {
  count = var.plain_mqtt ? 1 : 0

  metadata {
    name      = "iotcore-mqtt-internal"
    namespace = local.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/component" = "broker" })
  }
  spec {
    type = "ClusterIP"
    selector = {
      "app.kubernetes.io/name"      = "iotcore"
      "app.kubernetes.io/component" = "broker"
    }
    port {
      name        = "mqtt"
      port        = 1883
      target_port = "mqtt"
    }
  }
}

resource "kubernetes_pod_disruption_budget_v1" "service" {
  for_each = local.services

  metadata {
    name      = "iotcore-${each.key}"
    namespace = local.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/component" = each.key })
  }
  spec {
    # Brokers: one pod at a time, since each eviction disconnects all of its devices.
    max_unavailable = "1"
    selector {
      match_labels = {
        "app.kubernetes.io/name"      = "iotcore"
        "app.kubernetes.io/component" = each.key
      }
    }
  }
}

resource "kubernetes_horizontal_pod_autoscaler_v2" "service" {
  for_each = local.services

  metadata {
    name      = "iotcore-${each.key}"
    namespace = local.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/component" = each.key })
  }
  spec {
    min_replicas = var.replicas[each.key]
    max_replicas = max(var.max_replicas[each.key], var.replicas[each.key])

    scale_target_ref {
      api_version = "apps/v1"
      kind        = "Deployment"
      name        = kubernetes_deployment_v1.service[each.key].metadata[0].name
    }

    metric {
      type = "Resource"
      resource {
        name = "cpu"
        target {
          type                = "Utilization"
          average_utilization = each.key == "broker" ? 60 : 70
        }
      }
    }

    # Removing a broker pod disconnects its devices: scale brokers down slowly.
    dynamic "behavior" {
      for_each = each.key == "broker" ? [1] : []
      content {
        scale_down {
          stabilization_window_seconds = 900
          select_policy                = "Min"
          policy {
            type           = "Pods"
            value          = 1
            period_seconds = 600
          }
        }
      }
    }
  }
}
