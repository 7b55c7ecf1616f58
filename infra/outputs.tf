# azd stores every output in .azure/<env>/.env; the hooks and `azd deploy` read them from there.

output "AZURE_LOCATION" {
  value = var.location
}

output "AZURE_TENANT_ID" {
  value = data.azurerm_client_config.current.tenant_id
}

output "AZURE_RESOURCE_GROUP" {
  value = azurerm_resource_group.main.name
}

output "AZURE_CONTAINER_REGISTRY_ENDPOINT" {
  description = "azd pushes the api image here."
  value       = azurerm_container_registry.main.login_server
}

output "AZURE_CONTAINER_REGISTRY_NAME" {
  value = azurerm_container_registry.main.name
}

output "AZURE_CONTAINER_APPS_ENVIRONMENT_NAME" {
  value = azurerm_container_app_environment.main.name
}

output "AZURE_KEY_VAULT_NAME" {
  value = azurerm_key_vault.main.name
}

output "AZURE_KEY_VAULT_ENDPOINT" {
  value = azurerm_key_vault.main.vault_uri
}

output "SERVICE_API_NAME" {
  value = azurerm_container_app.api.name
}

output "SERVICE_API_URI" {
  description = "Stable base URL of the app (also its PUBLIC_BASE_URL)."
  value       = "https://${azurerm_container_app.api.ingress[0].fqdn}"
}

output "WHATSAPP_WEBHOOK_URL" {
  description = "Event Grid endpoint for Advanced Messaging events, without the ?code= secret."
  value       = "${local.webhook_base_url}${local.whatsapp_webhook_path}"
}

output "INCOMING_CALL_WEBHOOK_URL" {
  description = "Event Grid endpoint for IncomingCall, without the ?code= secret."
  value       = "${local.webhook_base_url}${local.incoming_call_webhook_path}"
}

output "META_WEBHOOK_URL" {
  description = "Callback URL to enter in the Meta app dashboard (whatsapp_provider = meta)."
  value       = "${local.webhook_base_url}/webhook/meta"
}

output "CALL_AUTOMATION_CALLBACK_URL" {
  value = "${local.webhook_base_url}/api/v1/calls/callbacks"
}

output "MEDIA_WEBSOCKET_URL" {
  value = "wss://${azurerm_container_app.api.ingress[0].fqdn}/api/v1/media/ws"
}

output "EVENT_SUBSCRIPTIONS_ENABLED" {
  value = var.enable_event_subscriptions
}

output "WHATSAPP_PROVIDER_EFFECTIVE" {
  description = "What the app runs with: sandbox when enable_whatsapp is false."
  value       = var.enable_whatsapp ? var.whatsapp_provider : "sandbox"
}

output "ACS_RESOURCE_NAME" {
  value = azapi_resource.acs.name
}

output "ACS_ENDPOINT" {
  value = local.acs_endpoint
}

output "EVENT_GRID_SYSTEM_TOPIC_NAME" {
  value = azurerm_eventgrid_system_topic.acs.name
}

output "DEAD_LETTER_STORAGE_ACCOUNT" {
  value = azurerm_storage_account.deadletter.name
}

output "DEAD_LETTER_CONTAINER" {
  value = azurerm_storage_container.deadletter.name
}

output "COSMOS_ENDPOINT" {
  value = azurerm_cosmosdb_account.main.endpoint
}

output "COSMOS_DATABASE" {
  value = azurerm_cosmosdb_sql_database.main.name
}

output "AZURE_OPENAI_ENDPOINT" {
  value = local.openai_endpoint
}

output "AZURE_OPENAI_DEPLOYMENT" {
  value = azurerm_cognitive_deployment.agent.name
}

output "COGNITIVE_SERVICES_ENDPOINT" {
  value = azurerm_cognitive_account.ai.endpoint
}

output "AZURE_CLIENT_ID" {
  description = "Client id of the app's user-assigned identity."
  value       = azurerm_user_assigned_identity.app.client_id
}

output "APPLICATIONINSIGHTS_NAME" {
  value = azurerm_application_insights.main.name
}

output "LOG_ANALYTICS_WORKSPACE_NAME" {
  value = azurerm_log_analytics_workspace.main.name
}
