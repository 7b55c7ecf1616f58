# handoff on Azure: one Container App behind a stable HTTPS FQDN, fed by ONE Event Grid system topic on the
# ACS resource, with Cosmos DB (context), Redis (claims, locks, cache), Azure AI services (agent + speech)
# and Key Vault (every secret the app reads). See docs/deployment.md for the order of a first deploy.

data "azurerm_client_config" "current" {}

locals {
  # Deterministic per subscription/environment/region, like azd's uniqueString() in Bicep templates.
  resource_token = substr(sha1("${data.azurerm_client_config.current.subscription_id}/${var.environment_name}/${var.location}"), 0, 13)
  ai_location    = var.ai_location != "" ? var.ai_location : var.location
  tags           = merge(var.tags, { "azd-env-name" = var.environment_name })

  # azd finds the container app by this tag; it must match the service name in azure.yaml.
  service_name = "api"
  app_name     = "ca-${local.service_name}-${local.resource_token}"

  # The app's stable FQDN is "<app name>.<environment default domain>". It is computed here (the app cannot
  # reference its own attributes) and checked against ingress[0].fqdn by a postcondition below. Never use
  # latest_revision_fqdn: it names one revision and changes on every deploy.
  app_fqdn        = "${local.app_name}.${azurerm_container_app_environment.main.default_domain}"
  public_base_url = "https://${local.app_fqdn}"

  whatsapp_acs  = var.enable_whatsapp && var.whatsapp_provider == "acs"
  whatsapp_meta = var.enable_whatsapp && var.whatsapp_provider == "meta"

  # Before azd has pushed the real image the app runs bootstrap_image, which has no /healthz or /readyz:
  # probe TCP until then. SERVICE_API_IMAGE_NAME (var.api_image) is set by azd after the first deploy.
  app_image_deployed = var.api_image != ""
  probe_transport    = local.app_image_deployed ? "HTTP" : "TCP"

  openai_endpoint = "https://${azurerm_cognitive_account.ai.custom_subdomain_name}.openai.azure.com/"
  acs_endpoint    = "https://${azapi_resource.acs.output.properties.hostName}"

  redis_url = var.redis_kind == "managed" ? (
    "rediss://:${urlencode(azurerm_managed_redis.main[0].default_database[0].primary_access_key)}@${azurerm_managed_redis.main[0].hostname}:${azurerm_managed_redis.main[0].default_database[0].port}"
    ) : (
    "rediss://:${urlencode(azurerm_redis_cache.main[0].primary_access_key)}@${azurerm_redis_cache.main[0].hostname}:${azurerm_redis_cache.main[0].ssl_port}"
  )

  # Plain settings of the container, by name. Keep in step with infra/app-settings.json (checked by
  # scripts/check-infra). `enabled = false` leaves the variable unset, so the app uses its embedded default.
  app_env = {
    PORT                        = { enabled = true, value = "8080" }
    LOG_FORMAT                  = { enabled = true, value = "json" }
    RUST_LOG                    = { enabled = true, value = var.rust_log }
    SHUTDOWN_GRACE_SECS         = { enabled = var.termination_grace_period_seconds > 10, value = tostring(var.termination_grace_period_seconds - 10) }
    AZURE_CLIENT_ID             = { enabled = true, value = azurerm_user_assigned_identity.app.client_id }
    PUBLIC_BASE_URL             = { enabled = true, value = local.public_base_url }
    COSMOS_ENDPOINT             = { enabled = true, value = azurerm_cosmosdb_account.main.endpoint }
    COSMOS_DATABASE             = { enabled = true, value = azurerm_cosmosdb_sql_database.main.name }
    ACS_ENDPOINT                = { enabled = var.acs_auth == "entra", value = local.acs_endpoint }
    ACS_WHATSAPP_CHANNEL_ID     = { enabled = local.whatsapp_acs && var.acs_whatsapp_channel_id != "", value = var.acs_whatsapp_channel_id }
    ACS_RESOURCE_ID             = { enabled = var.enable_voice && var.acs_resource_id != "", value = var.acs_resource_id }
    COGNITIVE_SERVICES_ENDPOINT = { enabled = var.enable_voice, value = azurerm_cognitive_account.ai.endpoint }
    TRANSCRIPTION_LOCALE        = { enabled = var.enable_voice && var.transcription_locale != "", value = var.transcription_locale }
    TTS_VOICE_NAME              = { enabled = var.enable_voice && var.tts_voice_name != "", value = var.tts_voice_name }
    AZURE_OPENAI_ENDPOINT       = { enabled = true, value = local.openai_endpoint }
    AZURE_OPENAI_DEPLOYMENT     = { enabled = true, value = azurerm_cognitive_deployment.agent.name }
    HANDOFF_WAIT_THRESHOLD_SECS = { enabled = var.handoff_wait_threshold_secs != "", value = var.handoff_wait_threshold_secs }
    BUSINESS_HOURS_TZ           = { enabled = var.business_hours_tz != "", value = var.business_hours_tz }
    BUSINESS_HOURS              = { enabled = var.business_hours != "", value = var.business_hours }
    WHATSAPP_PROVIDER           = { enabled = true, value = var.enable_whatsapp ? var.whatsapp_provider : "sandbox" }
    META_PHONE_NUMBER_ID        = { enabled = local.whatsapp_meta && var.meta_phone_number_id != "", value = var.meta_phone_number_id }
    META_WABA_ID                = { enabled = local.whatsapp_meta && var.meta_waba_id != "", value = var.meta_waba_id }
  }

  # Secret settings: environment variable => Key Vault secret (also the container app secret name).
  app_secret_env = {
    EVENT_GRID_SECRET     = { enabled = true, secret = "event-grid-secret" }
    ADMIN_API_KEY         = { enabled = true, secret = "admin-api-key" }
    REDIS_URL             = { enabled = true, secret = "redis-url" }
    ACS_CONNECTION_STRING = { enabled = var.acs_auth == "key", secret = "acs-connection-string" }
    WEBHOOK_VERIFY_TOKEN  = { enabled = local.whatsapp_meta, secret = "webhook-verify-token" }
    META_APP_SECRET       = { enabled = local.whatsapp_meta, secret = "meta-app-secret" }
    META_ACCESS_TOKEN     = { enabled = local.whatsapp_meta, secret = "meta-access-token" }
  }

  key_vault_secret_names = toset([for name, s in local.app_secret_env : s.secret if s.enabled])

  # Looked up by name only for the secrets that are enabled above.
  key_vault_secret_values = {
    "event-grid-secret"     = random_password.event_grid_secret.result
    "admin-api-key"         = random_password.admin_api_key.result
    "redis-url"             = local.redis_url
    "acs-connection-string" = one(data.azurerm_communication_service.acs[*].primary_connection_string)
    "webhook-verify-token"  = random_password.webhook_verify_token.result
    "meta-app-secret"       = var.meta_app_secret
    "meta-access-token"     = var.meta_access_token
  }

  # Cosmos DB containers, all partitioned on /customerId. default_ttl: null = TTL off, -1 = on, per item.
  cosmos_containers = {
    customers = { default_ttl = null }
    inbox     = { default_ttl = var.inbox_ttl_seconds }
    messages  = { default_ttl = null }
    handoffs  = { default_ttl = null }
    claims    = { default_ttl = -1 }
  }

  deployer_principals = toset(compact(distinct([
    lower(data.azurerm_client_config.current.object_id),
    lower(var.principal_id),
  ])))

  # Event Grid webhook endpoints on the stable FQDN; the query secret is the app's EVENT_GRID_SECRET.
  webhook_base_url           = "https://${azurerm_container_app.api.ingress[0].fqdn}"
  whatsapp_webhook_path      = "/api/v1/channels/whatsapp/webhook"
  incoming_call_webhook_path = "/api/v1/calls/incoming"
}

# --- Resource group, monitoring, identity --------------------------------------------------------------

resource "azurerm_resource_group" "main" {
  name     = "rg-${var.environment_name}"
  location = var.location
  tags     = local.tags
}

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${local.resource_token}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

resource "azurerm_application_insights" "main" {
  name                = "appi-${local.resource_token}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  workspace_id        = azurerm_log_analytics_workspace.main.id
  application_type    = "web"
  tags                = local.tags
}

resource "azurerm_user_assigned_identity" "app" {
  name                = "id-${local.service_name}-${local.resource_token}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

# --- Key Vault (RBAC) and the app's secrets ----------------------------------------------------------

resource "azurerm_key_vault" "main" {
  #checkov:skip=CKV_AZURE_109:The Consumption Container Apps environment has no fixed egress IPs and the vault is read through identity-scoped RBAC; a firewall would need VNet integration (see docs/deployment.md).
  #checkov:skip=CKV_AZURE_189:Public endpoint needed for the same reason as CKV_AZURE_109; access is Entra ID + RBAC only.
  #checkov:skip=CKV2_AZURE_32:Private endpoints need a VNet-integrated environment, out of scope for the default deployment.
  #checkov:skip=CKV_AZURE_110:Purge protection is a variable (key_vault_purge_protection); off by default so `azd down --purge` can reuse the name.
  #checkov:skip=CKV_AZURE_42:Soft delete is on (7 days); purge protection, the other half of this check, is the variable above.
  name                          = "kv-${local.resource_token}"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "standard"
  rbac_authorization_enabled    = true
  purge_protection_enabled      = var.key_vault_purge_protection
  soft_delete_retention_days    = 7
  public_network_access_enabled = true
  tags                          = local.tags

  network_acls {
    bypass         = "AzureServices"
    default_action = "Allow"
  }
}

resource "azurerm_role_assignment" "deployer_kv_secrets_officer" {
  for_each             = local.deployer_principals
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = each.value
}

resource "azurerm_role_assignment" "app_kv_secrets_user" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# Role assignments take a while to reach the data planes; secrets are written and the app reads them right after.
resource "time_sleep" "rbac_propagation" {
  create_duration = "60s"

  depends_on = [
    azurerm_role_assignment.deployer_kv_secrets_officer,
    azurerm_role_assignment.app_kv_secrets_user,
    azurerm_role_assignment.app_acr_pull,
  ]
}

resource "random_password" "event_grid_secret" {
  # Travels in the webhook query string (?code=): letters and digits only.
  length  = 48
  special = false
}

resource "random_password" "admin_api_key" {
  length  = 48
  special = false
}

resource "random_password" "webhook_verify_token" {
  # Meta's hub.verify_token; entered in the Meta app dashboard when whatsapp_provider = meta.
  length  = 32
  special = false
}

resource "azurerm_key_vault_secret" "app" {
  #checkov:skip=CKV_AZURE_41:Generated and rotated by Terraform (or by the operator, see docs/deployment.md); an expiry date would take the app down silently.
  for_each     = local.key_vault_secret_names
  name         = each.value
  value        = local.key_vault_secret_values[each.value]
  key_vault_id = azurerm_key_vault.main.id
  content_type = "text/plain"
  tags         = local.tags

  depends_on = [time_sleep.rbac_propagation]
}

# --- Container registry and Container Apps -----------------------------------------------------------

resource "azurerm_container_registry" "main" {
  #checkov:skip=CKV_AZURE_139:azd pushes from the developer's machine or CI; Basic SKU has no private endpoints.
  #checkov:skip=CKV_AZURE_163:Image vulnerability scanning is Defender for Containers, enabled per subscription, not per registry.
  #checkov:skip=CKV_AZURE_164:Content trust (signed images) is a Premium feature; images come only from this repository's azd deploy.
  #checkov:skip=CKV_AZURE_165:Geo-replication is Premium; a single region matches the single-region app.
  #checkov:skip=CKV_AZURE_166:Quarantine is Premium-only.
  #checkov:skip=CKV_AZURE_167:Retention of untagged manifests is Premium-only.
  #checkov:skip=CKV_AZURE_233:Zone redundancy is Premium-only.
  #checkov:skip=CKV_AZURE_237:Dedicated data endpoints are Premium-only.
  name                          = "cr${local.resource_token}"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  sku                           = "Basic"
  admin_enabled                 = false
  public_network_access_enabled = true
  tags                          = local.tags
}

resource "azurerm_role_assignment" "app_acr_pull" {
  scope                = azurerm_container_registry.main.id
  role_definition_name = "AcrPull"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "deployer_acr_push" {
  for_each             = local.deployer_principals
  scope                = azurerm_container_registry.main.id
  role_definition_name = "AcrPush"
  principal_id         = each.value
}

resource "azurerm_container_app_environment" "main" {
  name                       = "cae-${local.resource_token}"
  location                   = azurerm_resource_group.main.location
  resource_group_name        = azurerm_resource_group.main.name
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
  tags                       = local.tags
}

resource "azurerm_container_app" "api" {
  name                         = local.app_name
  container_app_environment_id = azurerm_container_app_environment.main.id
  resource_group_name          = azurerm_resource_group.main.name
  revision_mode                = "Single"
  tags                         = merge(local.tags, { "azd-service-name" = local.service_name })

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.app.id]
  }

  registry {
    server   = azurerm_container_registry.main.login_server
    identity = azurerm_user_assigned_identity.app.id
  }

  # Every secret is a Key Vault reference read with the app's identity; no secret value lives in the app.
  dynamic "secret" {
    for_each = local.key_vault_secret_names
    content {
      name                = secret.value
      key_vault_secret_id = azurerm_key_vault_secret.app[secret.value].versionless_id
      identity            = azurerm_user_assigned_identity.app.id
    }
  }

  ingress {
    external_enabled           = true
    target_port                = 8080
    transport                  = "auto" # HTTP/1.1 + WebSocket upgrade for /api/v1/media/ws
    allow_insecure_connections = false

    traffic_weight {
      latest_revision = true
      percentage      = 100
    }
  }

  template {
    min_replicas                     = var.min_replicas
    max_replicas                     = var.max_replicas
    termination_grace_period_seconds = var.termination_grace_period_seconds

    http_scale_rule {
      name                = "http-concurrency"
      concurrent_requests = tostring(var.http_concurrency)
    }

    container {
      name   = local.service_name
      image  = local.app_image_deployed ? var.api_image : var.bootstrap_image
      cpu    = var.container_cpu
      memory = "${var.container_cpu * 2}Gi"

      dynamic "env" {
        for_each = { for name, setting in local.app_env : name => setting.value if setting.enabled }
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = { for name, setting in local.app_secret_env : name => setting.secret if setting.enabled }
        content {
          name        = env.key
          secret_name = env.value
        }
      }

      startup_probe {
        transport               = "TCP"
        port                    = 8080
        interval_seconds        = 3
        failure_count_threshold = 20
      }

      liveness_probe {
        transport               = local.probe_transport
        port                    = 8080
        path                    = local.probe_transport == "HTTP" ? "/healthz" : null
        interval_seconds        = 10
        timeout                 = 3
        failure_count_threshold = 3
      }

      readiness_probe {
        transport               = local.probe_transport
        port                    = 8080
        path                    = local.probe_transport == "HTTP" ? "/readyz" : null
        interval_seconds        = 5
        timeout                 = 3
        failure_count_threshold = 3
        success_count_threshold = 1
      }
    }
  }

  lifecycle {
    # azd deploy replaces the image of the running app; a later provision must not put the old one back.
    ignore_changes = [template[0].container[0].image]

    precondition {
      condition     = !local.whatsapp_meta || (nonsensitive(var.meta_app_secret != "") && nonsensitive(var.meta_access_token != ""))
      error_message = "whatsapp_provider = meta needs meta_app_secret and meta_access_token (azd env set META_APP_SECRET ... / META_ACCESS_TOKEN ...)."
    }

    postcondition {
      condition     = self.ingress[0].fqdn == local.app_fqdn
      error_message = "The app's stable FQDN is not <app name>.<environment default domain>; PUBLIC_BASE_URL would be wrong."
    }
  }

  depends_on = [time_sleep.rbac_propagation]
}

# --- Azure Communication Services and its ONE Event Grid system topic --------------------------------

# azapi: azurerm_communication_service cannot give ACS the system-assigned identity it needs to call
# Azure AI services (transcription, TTS) on behalf of Call Automation.
resource "azapi_resource" "acs" {
  type      = "Microsoft.Communication/communicationServices@2023-04-01"
  name      = "acs-${local.resource_token}"
  parent_id = azurerm_resource_group.main.id
  location  = "global"
  tags      = local.tags

  identity {
    type = "SystemAssigned"
  }

  body = {
    properties = {
      dataLocation = var.acs_data_location
    }
  }

  response_export_values = ["properties.hostName"]
}

data "azurerm_communication_service" "acs" {
  count               = var.acs_auth == "key" ? 1 : 0
  name                = azapi_resource.acs.name
  resource_group_name = azurerm_resource_group.main.name
}

resource "azurerm_role_assignment" "app_acs_contributor" {
  # Call Automation and Advanced Messaging accept Entra ID tokens from principals with this role on the resource.
  count                = var.acs_auth == "entra" ? 1 : 0
  scope                = azapi_resource.acs.id
  role_definition_name = "Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# Only one system topic may exist per source resource: every ACS subscription hangs off this one.
resource "azurerm_eventgrid_system_topic" "acs" {
  name                   = "evgt-acs-${local.resource_token}"
  resource_group_name    = azurerm_resource_group.main.name
  location               = "global"
  source_arm_resource_id = azapi_resource.acs.id
  topic_type             = "Microsoft.Communication.CommunicationServices"
  tags                   = local.tags

  identity {
    type = "SystemAssigned"
  }
}

resource "azurerm_storage_account" "deadletter" {
  #checkov:skip=CKV_AZURE_206:Dead-lettered events are diagnostics, kept 7 days; LRS is enough.
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys are enough for dead-lettered event envelopes.
  #checkov:skip=CKV2_AZURE_33:Private endpoints need VNet integration, out of scope; the firewall allows only trusted Azure services.
  #checkov:skip=CKV_AZURE_33:No queues are used in this account.
  #checkov:skip=CKV_AZURE_59:The trusted-service exception Event Grid relies on only works with the public endpoint on and default_action = Deny (below); no other network can reach it.
  name                              = "st${local.resource_token}"
  location                          = azurerm_resource_group.main.location
  resource_group_name               = azurerm_resource_group.main.name
  account_kind                      = "StorageV2"
  account_tier                      = "Standard"
  account_replication_type          = "LRS"
  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  cross_tenant_replication_enabled  = false
  infrastructure_encryption_enabled = true
  local_user_enabled                = false
  public_network_access_enabled     = true
  tags                              = local.tags

  # Event Grid writes dead letters with its managed identity as a trusted Azure service.
  network_rules {
    default_action = "Deny"
    bypass         = ["AzureServices"]
    ip_rules       = var.operator_ip_ranges
  }

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  sas_policy {
    expiration_period = "00.01:00:00"
    expiration_action = "Log"
  }
}

resource "azurerm_storage_container" "deadletter" {
  #checkov:skip=CKV2_AZURE_21:Blob read logging is not needed for dead-lettered Event Grid envelopes.
  name                  = "eventgrid-deadletter"
  storage_account_id    = azurerm_storage_account.deadletter.id
  container_access_type = "private"
}

resource "azurerm_role_assignment" "topic_deadletter_writer" {
  scope                = azurerm_storage_account.deadletter.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_eventgrid_system_topic.acs.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# The subscriptions exist only once the real app answers the validation handshake (enable_event_subscriptions).
resource "azurerm_eventgrid_system_topic_event_subscription" "whatsapp" {
  count                 = var.enable_event_subscriptions && local.whatsapp_acs ? 1 : 0
  name                  = "whatsapp-to-api"
  system_topic          = azurerm_eventgrid_system_topic.acs.name
  resource_group_name   = azurerm_resource_group.main.name
  event_delivery_schema = "EventGridSchema"
  included_event_types = [
    "Microsoft.Communication.AdvancedMessageReceived",
    "Microsoft.Communication.AdvancedMessageDeliveryStatusUpdated",
  ]

  webhook_endpoint {
    url                               = "${local.webhook_base_url}${local.whatsapp_webhook_path}?code=${random_password.event_grid_secret.result}"
    max_events_per_batch              = 10
    preferred_batch_size_in_kilobytes = 64
  }

  retry_policy {
    max_delivery_attempts = 30
    event_time_to_live    = 1440
  }

  dead_letter_identity {
    type = "SystemAssigned"
  }

  storage_blob_dead_letter_destination {
    storage_account_id          = azurerm_storage_account.deadletter.id
    storage_blob_container_name = azurerm_storage_container.deadletter.name
  }

  depends_on = [azurerm_role_assignment.topic_deadletter_writer]
}

resource "azurerm_eventgrid_system_topic_event_subscription" "incoming_call" {
  count                 = var.enable_event_subscriptions && var.enable_voice ? 1 : 0
  name                  = "incoming-call-to-api"
  system_topic          = azurerm_eventgrid_system_topic.acs.name
  resource_group_name   = azurerm_resource_group.main.name
  event_delivery_schema = "EventGridSchema"
  included_event_types  = ["Microsoft.Communication.IncomingCall"]

  webhook_endpoint {
    # One call per delivery: the incomingCallContext must be answered within seconds.
    url                               = "${local.webhook_base_url}${local.incoming_call_webhook_path}?code=${random_password.event_grid_secret.result}"
    max_events_per_batch              = 1
    preferred_batch_size_in_kilobytes = 64
  }

  retry_policy {
    max_delivery_attempts = 30
    event_time_to_live    = 1440
  }

  dead_letter_identity {
    type = "SystemAssigned"
  }

  storage_blob_dead_letter_destination {
    storage_account_id          = azurerm_storage_account.deadletter.id
    storage_blob_container_name = azurerm_storage_container.deadletter.name
  }

  depends_on = [azurerm_role_assignment.topic_deadletter_writer]
}

# --- Cosmos DB for NoSQL -------------------------------------------------------------------------

resource "azurerm_cosmosdb_account" "main" {
  #checkov:skip=CKV_AZURE_99:Public endpoint with Entra-only data access (local auth disabled); a firewall needs VNet integration.
  #checkov:skip=CKV_AZURE_101:Same as CKV_AZURE_99.
  #checkov:skip=CKV_AZURE_100:Microsoft-managed keys; customer-managed keys are not required for this data.
  #checkov:skip=CKV2_AZURE_49:Private endpoints need VNet integration, out of scope for the default deployment.
  name                               = "cosmos-${local.resource_token}"
  location                           = azurerm_resource_group.main.location
  resource_group_name                = azurerm_resource_group.main.name
  offer_type                         = "Standard"
  kind                               = "GlobalDocumentDB"
  local_authentication_disabled      = true
  access_key_metadata_writes_enabled = false
  minimal_tls_version                = "Tls12"
  public_network_access_enabled      = true
  automatic_failover_enabled         = false
  tags                               = local.tags

  consistency_policy {
    consistency_level = "Session"
  }

  geo_location {
    location          = azurerm_resource_group.main.location
    failover_priority = 0
  }

  dynamic "capabilities" {
    for_each = var.cosmos_capacity_mode == "serverless" ? ["EnableServerless"] : []
    content {
      name = capabilities.value
    }
  }
}

resource "azurerm_cosmosdb_sql_database" "main" {
  name                = "handoff"
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main.name
  throughput          = var.cosmos_capacity_mode == "provisioned" ? var.cosmos_throughput : null

  dynamic "autoscale_settings" {
    for_each = var.cosmos_capacity_mode == "autoscale" ? [var.cosmos_max_throughput] : []
    content {
      max_throughput = autoscale_settings.value
    }
  }
}

resource "azurerm_cosmosdb_sql_container" "main" {
  for_each              = local.cosmos_containers
  name                  = each.key
  resource_group_name   = azurerm_resource_group.main.name
  account_name          = azurerm_cosmosdb_account.main.name
  database_name         = azurerm_cosmosdb_sql_database.main.name
  partition_key_paths   = ["/customerId"]
  partition_key_version = 2
  default_ttl           = each.value.default_ttl
}

resource "azurerm_cosmosdb_sql_role_assignment" "app_data_contributor" {
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main.name
  # Cosmos DB Built-in Data Contributor
  role_definition_id = "${azurerm_cosmosdb_account.main.id}/sqlRoleDefinitions/00000000-0000-0000-0000-000000000002"
  principal_id       = azurerm_user_assigned_identity.app.principal_id
  scope              = azurerm_cosmosdb_account.main.id
}

# --- Redis (TLS only) -------------------------------------------------------------------------------

resource "azurerm_managed_redis" "main" {
  count               = var.redis_kind == "managed" ? 1 : 0
  name                = "redis-${local.resource_token}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku_name            = var.redis_managed_sku
  tags                = local.tags

  default_database {
    # The app authenticates with REDIS_URL (key in Key Vault); it has no Entra token support for Redis.
    access_keys_authentication_enabled = true
    client_protocol                    = "Encrypted"
    # One endpoint that non-cluster-aware clients can use (the app's redis client is not cluster-aware).
    clustering_policy = "EnterpriseCluster"
    # Claims and locks carry TTLs: evicting them would let duplicates through. Fail writes instead.
    eviction_policy = "NoEviction"
  }
}

resource "azurerm_redis_cache" "main" {
  #checkov:skip=CKV_AZURE_89:Public endpoint, TLS 1.2 only and key auth; private endpoints need VNet integration.
  count                         = var.redis_kind == "cache" ? 1 : 0
  name                          = "redis-${local.resource_token}"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  sku_name                      = var.redis_cache_sku
  family                        = var.redis_cache_sku == "Premium" ? "P" : "C"
  capacity                      = var.redis_cache_capacity
  non_ssl_port_enabled          = false
  minimum_tls_version           = "1.2"
  public_network_access_enabled = true
  redis_version                 = "6"
  tags                          = local.tags

  redis_configuration {
    maxmemory_policy = "noeviction"
    # Entra ID is switched on for the identity below; the app itself still uses the key from REDIS_URL.
    active_directory_authentication_enabled = true
  }

  lifecycle {
    precondition {
      condition     = var.redis_cache_sku != "Premium" || var.redis_cache_capacity >= 1
      error_message = "Premium Azure Cache for Redis sizes are P1..P5: set redis_cache_capacity >= 1."
    }
  }
}

resource "azurerm_redis_cache_access_policy_assignment" "app" {
  count              = var.redis_kind == "cache" ? 1 : 0
  name               = "handoff-api"
  redis_cache_id     = azurerm_redis_cache.main[0].id
  access_policy_name = "Data Contributor"
  object_id          = azurerm_user_assigned_identity.app.principal_id
  object_id_alias    = "handoff-api"
}

# --- Azure AI services: OpenAI deployment for the agent, speech for Call Automation -------------------

resource "azurerm_cognitive_account" "ai" {
  #checkov:skip=CKV_AZURE_134:Call Automation reaches this endpoint from ACS over the public network; access is Entra-only (local auth disabled).
  #checkov:skip=CKV2_AZURE_22:Microsoft-managed keys are enough; no customer data is stored in the account.
  name                          = "ai-${local.resource_token}"
  location                      = local.ai_location
  resource_group_name           = azurerm_resource_group.main.name
  kind                          = "AIServices"
  sku_name                      = "S0"
  custom_subdomain_name         = "ai-${local.resource_token}"
  local_auth_enabled            = false
  public_network_access_enabled = true
  tags                          = local.tags

  identity {
    type = "SystemAssigned"
  }
}

resource "azurerm_cognitive_deployment" "agent" {
  name                   = var.openai_deployment_name
  cognitive_account_id   = azurerm_cognitive_account.ai.id
  version_upgrade_option = "OnceCurrentVersionExpired"

  model {
    format  = "OpenAI"
    name    = var.openai_model_name
    version = var.openai_model_version
  }

  sku {
    name     = var.openai_deployment_sku
    capacity = var.openai_capacity
  }
}

resource "azurerm_role_assignment" "app_openai_user" {
  scope                = azurerm_cognitive_account.ai.id
  role_definition_name = "Cognitive Services OpenAI User"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# Call Automation uses ACS's own identity for transcription and text-to-speech on this account.
resource "azurerm_role_assignment" "acs_cognitive_user" {
  count                = var.enable_voice ? 1 : 0
  scope                = azurerm_cognitive_account.ai.id
  role_definition_name = "Cognitive Services User"
  principal_id         = azapi_resource.acs.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# Delivery failures of the system topic land in Log Analytics (AegDeliveryFailureLogs), next to the app's logs.
resource "azurerm_monitor_diagnostic_setting" "system_topic" {
  name                       = "to-log-analytics"
  target_resource_id         = azurerm_eventgrid_system_topic.acs.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "DeliveryFailures"
  }
}
