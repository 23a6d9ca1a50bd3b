output "namespace" {
  description = "The namespace iotcore runs in."
  value       = local.namespace
}

output "api_endpoint" {
  description = "The REST API inside the cluster (put an Ingress or Gateway with TLS in front for outside access)."
  value       = "http://${kubernetes_service_v1.api.metadata[0].name}.${local.namespace}.svc:8080"
}

output "mqtt_load_balancer" {
  description = "The MQTT load balancer's address (hostname or IP), null until the cloud assigned one."
  value = try(
    coalesce(
      kubernetes_service_v1.mqtt.status[0].load_balancer[0].ingress[0].hostname,
      kubernetes_service_v1.mqtt.status[0].load_balancer[0].ingress[0].ip,
    ),
    null,
  )
}

output "mqtts_endpoint" {
  description = "MQTT over TLS for devices: mqtts://<load balancer>:8883."
  value = try(
    "mqtts://${coalesce(
      kubernetes_service_v1.mqtt.status[0].load_balancer[0].ingress[0].hostname,
      kubernetes_service_v1.mqtt.status[0].load_balancer[0].ingress[0].ip,
    )}:8883",
    null,
  )
}

output "mqtt_internal_endpoint" {
  description = "Plain MQTT inside the cluster, when var.plain_mqtt is on."
  value       = var.plain_mqtt ? "mqtt://iotcore-mqtt-internal.${local.namespace}.svc:1883" : null
}
