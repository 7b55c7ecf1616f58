# Inputs of the handoff deployment. azd fills the first block from its environment through
# main.tfvars.json; everything else has a default that deploys a working, small environment.

# --- azd environment --------------------------------------------------------------------------------

variable "environment_name" {
  description = "azd environment name (AZURE_ENV_NAME); used in resource names and the azd-env-name tag."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$", var.environment_name))
    error_message = "environment_name must be 2-32 lowercase letters, digits or hyphens, not starting or ending with a hyphen."
  }
}

variable "location" {
  description = "Azure region for the regional resources (AZURE_LOCATION), e.g. swedencentral or eastus2."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]+$", var.location))
    error_message = "location must be an Azure region name such as eastus2 (lowercase, no spaces)."
  }
}

variable "subscription_id" {
  description = "Subscription to deploy into (AZURE_SUBSCRIPTION_ID). Empty: ARM_SUBSCRIPTION_ID or the Azure CLI default."
  type        = string
  default     = ""

  validation {
    condition     = var.subscription_id == "" || can(regex("^[0-9a-fA-F-]{36}$", var.subscription_id))
    error_message = "subscription_id must be empty or a GUID."
  }
}

variable "principal_id" {
  description = "Object id of the developer running azd (AZURE_PRINCIPAL_ID): gets AcrPush and Key Vault Secrets Officer."
  type        = string
  default     = ""

  validation {
    condition     = var.principal_id == "" || can(regex("^[0-9a-fA-F-]{36}$", var.principal_id))
    error_message = "principal_id must be empty or a GUID."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

# --- First-deploy ordering (see docs/deployment.md, "Why azd up provisions twice") ----------------------

variable "enable_event_subscriptions" {
  description = "Create the Event Grid subscriptions. Event Grid validates a webhook when the subscription is created, so this stays false until the real image is running; the azd postdeploy hook sets ENABLE_EVENT_SUBSCRIPTIONS=true and provisions again."
  type        = bool
  default     = false
}

variable "api_image" {
  description = "Image azd last deployed (SERVICE_API_IMAGE_NAME). Empty before the first deploy: the app then starts from bootstrap_image with TCP probes."
  type        = string
  default     = ""
}

variable "bootstrap_image" {
  description = "Public image the container app is created with before azd has pushed the real one. It must listen on port 8080."
  type        = string
  default     = "mcr.microsoft.com/dotnet/samples:aspnetapp"
}

# --- Features ------------------------------------------------------------------------------------

variable "enable_whatsapp" {
  description = "Deploy the WhatsApp side: the Advanced Messaging event subscription (provider acs) and the WhatsApp settings of the app."
  type        = bool
  default     = true
}

variable "enable_voice" {
  description = "Deploy the voice side: the IncomingCall event subscription, the AI services endpoint for Call Automation and its role for ACS."
  type        = bool
  default     = true
}

variable "whatsapp_provider" {
  description = "WhatsApp provider the app uses: acs (Advanced Messaging, events through Event Grid) or meta (Cloud API, webhook /webhook/meta)."
  type        = string
  default     = "acs"

  validation {
    condition     = contains(["acs", "meta"], var.whatsapp_provider)
    error_message = "whatsapp_provider must be acs or meta."
  }
}

variable "acs_whatsapp_channel_id" {
  description = "Channel registration id (GUID) of the WhatsApp Business number connected to ACS (portal: Communication Services > Advanced Messaging > Channels). Empty until connected."
  type        = string
  default     = ""

  validation {
    condition     = var.acs_whatsapp_channel_id == "" || can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", var.acs_whatsapp_channel_id))
    error_message = "acs_whatsapp_channel_id must be empty or a GUID."
  }
}

variable "acs_resource_id" {
  description = "Immutable resource id (GUID) of the Communication Services resource (az communication show --query immutableResourceId). When set, the app requires ACS's signed token on Call Automation callbacks. Empty: only the per-call token is checked."
  type        = string
  default     = ""

  validation {
    condition     = var.acs_resource_id == "" || can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", var.acs_resource_id))
    error_message = "acs_resource_id must be empty or a GUID."
  }
}

variable "whatsapp_business_phone_number" {
  description = "The WhatsApp Business phone number in E.164 (e.g. +14255550123). Informational: shown in outputs and hooks; the app learns the channel from ACS_WHATSAPP_CHANNEL_ID."
  type        = string
  default     = ""

  validation {
    condition     = var.whatsapp_business_phone_number == "" || can(regex("^\\+[1-9][0-9]{6,14}$", var.whatsapp_business_phone_number))
    error_message = "whatsapp_business_phone_number must be empty or E.164, e.g. +14255550123."
  }
}

variable "acs_auth" {
  description = "How the app authenticates to ACS: entra (managed identity, ACS_ENDPOINT) or key (connection string in Key Vault, ACS_CONNECTION_STRING)."
  type        = string
  default     = "entra"

  validation {
    condition     = contains(["entra", "key"], var.acs_auth)
    error_message = "acs_auth must be entra or key."
  }
}

variable "acs_data_location" {
  description = "Where ACS stores data at rest."
  type        = string
  default     = "United States"

  validation {
    condition = contains([
      "Africa", "Asia Pacific", "Australia", "Brazil", "Canada", "Europe", "France", "Germany", "India", "Japan",
      "Korea", "Norway", "Switzerland", "UAE", "UK", "United States",
    ], var.acs_data_location)
    error_message = "acs_data_location must be one of the ACS data locations, e.g. United States or Europe."
  }
}

# --- Meta Cloud API (only with whatsapp_provider = "meta") -----------------------------------------

variable "meta_app_secret" {
  description = "Meta app secret (verifies X-Hub-Signature-256). Stored in Key Vault."
  type        = string
  default     = ""
  sensitive   = true
}

variable "meta_access_token" {
  description = "Meta system-user access token for the Cloud API. Stored in Key Vault."
  type        = string
  default     = ""
  sensitive   = true
}

variable "meta_phone_number_id" {
  description = "Meta phone number id (digits)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[0-9]*$", var.meta_phone_number_id))
    error_message = "meta_phone_number_id must be digits (or empty)."
  }
}

variable "meta_waba_id" {
  description = "Meta WhatsApp Business Account id (digits)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[0-9]*$", var.meta_waba_id))
    error_message = "meta_waba_id must be digits (or empty)."
  }
}

# --- Container app ---------------------------------------------------------------------------------

variable "container_cpu" {
  description = "vCPU per replica (Consumption profile: 0.25 steps, memory = 2 x cpu)."
  type        = number
  default     = 0.5

  validation {
    condition     = contains([0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2], var.container_cpu)
    error_message = "container_cpu must be one of 0.25, 0.5, ... 2."
  }
}

variable "min_replicas" {
  description = "Minimum replicas. Keep at least 1: a cold start would miss the 30 s Event Grid and IncomingCall answer windows."
  type        = number
  default     = 1

  validation {
    condition     = var.min_replicas >= 0 && var.min_replicas <= 30 && floor(var.min_replicas) == var.min_replicas
    error_message = "min_replicas must be a whole number between 0 and 30."
  }
}

variable "max_replicas" {
  description = "Maximum replicas."
  type        = number
  default     = 5

  validation {
    condition     = var.max_replicas >= 1 && var.max_replicas <= 300 && floor(var.max_replicas) == var.max_replicas
    error_message = "max_replicas must be a whole number between 1 and 300."
  }
}

variable "http_concurrency" {
  description = "Concurrent HTTP requests per replica before the HTTP scale rule adds a replica."
  type        = number
  default     = 50

  validation {
    condition     = var.http_concurrency >= 1 && var.http_concurrency <= 10000
    error_message = "http_concurrency must be between 1 and 10000."
  }
}

variable "termination_grace_period_seconds" {
  description = "Time a replica gets after SIGTERM (scale-in, new revision) to finish calls and drain workers."
  type        = number
  default     = 120

  validation {
    condition     = var.termination_grace_period_seconds >= 0 && var.termination_grace_period_seconds <= 600
    error_message = "termination_grace_period_seconds must be between 0 and 600."
  }
}

variable "rust_log" {
  description = "RUST_LOG filter of the app."
  type        = string
  default     = "info"
}

# --- Optional app tuning (empty = the app's embedded default; the variable is then not set) -------------

variable "transcription_locale" {
  description = "TRANSCRIPTION_LOCALE for Call Automation real-time transcription, e.g. en-US."
  type        = string
  default     = ""

  validation {
    condition     = var.transcription_locale == "" || can(regex("^[a-z]{2,3}-[A-Z]{2}$", var.transcription_locale))
    error_message = "transcription_locale must be empty or a locale like en-US."
  }
}

variable "tts_voice_name" {
  description = "TTS_VOICE_NAME (Azure AI Speech voice), e.g. en-US-AvaMultilingualNeural."
  type        = string
  default     = ""
}

variable "handoff_wait_threshold_secs" {
  description = "HANDOFF_WAIT_THRESHOLD_SECS: estimated wait above which the agent offers WhatsApp."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[0-9]*$", var.handoff_wait_threshold_secs))
    error_message = "handoff_wait_threshold_secs must be a whole number of seconds (or empty)."
  }
}

variable "business_hours_tz" {
  description = "BUSINESS_HOURS_TZ (IANA time zone, e.g. Europe/Madrid)."
  type        = string
  default     = ""
}

variable "business_hours" {
  description = "BUSINESS_HOURS in the app's format (see docs/configuration.md)."
  type        = string
  default     = ""
}

# --- Cosmos DB -------------------------------------------------------------------------------------

variable "cosmos_capacity_mode" {
  description = "serverless (pay per request, default), autoscale (shared database throughput scaling 10%..100% of cosmos_max_throughput) or provisioned (fixed cosmos_throughput)."
  type        = string
  default     = "serverless"

  validation {
    condition     = contains(["serverless", "autoscale", "provisioned"], var.cosmos_capacity_mode)
    error_message = "cosmos_capacity_mode must be serverless, autoscale or provisioned."
  }
}

variable "cosmos_max_throughput" {
  description = "Autoscale maximum RU/s of the database (cosmos_capacity_mode = autoscale)."
  type        = number
  default     = 1000

  validation {
    condition     = var.cosmos_max_throughput >= 1000 && var.cosmos_max_throughput % 1000 == 0
    error_message = "cosmos_max_throughput must be a multiple of 1000, at least 1000."
  }
}

variable "cosmos_throughput" {
  description = "Manual RU/s of the database (cosmos_capacity_mode = provisioned)."
  type        = number
  default     = 400

  validation {
    condition     = var.cosmos_throughput >= 400 && var.cosmos_throughput % 100 == 0
    error_message = "cosmos_throughput must be a multiple of 100, at least 400."
  }
}

variable "inbox_ttl_seconds" {
  description = "Default TTL of the inbox container (processed-event records), seconds."
  type        = number
  default     = 604800

  validation {
    condition     = var.inbox_ttl_seconds >= 3600 && floor(var.inbox_ttl_seconds) == var.inbox_ttl_seconds
    error_message = "inbox_ttl_seconds must be a whole number of at least 3600."
  }
}

# --- Redis ---------------------------------------------------------------------------------------

variable "redis_kind" {
  description = "managed (Azure Managed Redis, default) or cache (Azure Cache for Redis)."
  type        = string
  default     = "managed"

  validation {
    condition     = contains(["managed", "cache"], var.redis_kind)
    error_message = "redis_kind must be managed or cache."
  }
}

variable "redis_managed_sku" {
  description = "Azure Managed Redis SKU (redis_kind = managed)."
  type        = string
  default     = "Balanced_B0"

  validation {
    condition     = can(regex("^(Balanced|MemoryOptimized|ComputeOptimized|FlashOptimized)_[A-Z][0-9]+$", var.redis_managed_sku))
    error_message = "redis_managed_sku must look like Balanced_B0, MemoryOptimized_M10, ..."
  }
}

variable "redis_cache_sku" {
  description = "Azure Cache for Redis SKU (redis_kind = cache)."
  type        = string
  default     = "Standard"

  validation {
    condition     = contains(["Basic", "Standard", "Premium"], var.redis_cache_sku)
    error_message = "redis_cache_sku must be Basic, Standard or Premium."
  }
}

variable "redis_cache_capacity" {
  description = "Azure Cache for Redis size (C0..C6, or P1..P5 for Premium)."
  type        = number
  default     = 0

  validation {
    condition     = var.redis_cache_capacity >= 0 && var.redis_cache_capacity <= 6
    error_message = "redis_cache_capacity must be between 0 and 6."
  }
}

# --- Azure AI services -----------------------------------------------------------------------------

variable "ai_location" {
  description = "Region of the AI services account (model availability differs per region). Empty: same as location."
  type        = string
  default     = ""

  validation {
    condition     = var.ai_location == "" || can(regex("^[a-z][a-z0-9]+$", var.ai_location))
    error_message = "ai_location must be empty or an Azure region name."
  }
}

variable "openai_model_name" {
  description = "Azure OpenAI model for the agent and summariser."
  type        = string
  default     = "gpt-4o-mini"
}

variable "openai_model_version" {
  description = "Model version."
  type        = string
  default     = "2024-07-18"
}

variable "openai_deployment_name" {
  description = "Deployment name (AZURE_OPENAI_DEPLOYMENT)."
  type        = string
  default     = "agent"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$", var.openai_deployment_name))
    error_message = "openai_deployment_name must be 2-64 letters, digits, dots, underscores or hyphens."
  }
}

variable "openai_deployment_sku" {
  description = "Deployment type."
  type        = string
  default     = "GlobalStandard"

  validation {
    condition     = contains(["Standard", "GlobalStandard", "DataZoneStandard", "ProvisionedManaged", "GlobalProvisionedManaged"], var.openai_deployment_sku)
    error_message = "openai_deployment_sku must be Standard, GlobalStandard, DataZoneStandard, ProvisionedManaged or GlobalProvisionedManaged."
  }
}

variable "openai_capacity" {
  description = "Deployment capacity in thousands of tokens per minute (Standard types)."
  type        = number
  default     = 30

  validation {
    condition     = var.openai_capacity >= 1 && var.openai_capacity <= 10000
    error_message = "openai_capacity must be between 1 and 10000."
  }
}

# --- Operations ------------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Log Analytics retention."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 30 && var.log_retention_days <= 730
    error_message = "log_retention_days must be between 30 and 730."
  }
}

variable "operator_ip_ranges" {
  description = "Public IPs/CIDRs allowed through the dead-letter storage firewall, to read dead letters (e.g. [\"203.0.113.7\"])."
  type        = list(string)
  default     = []

  validation {
    # Storage firewalls take single addresses, or ranges no smaller than /30.
    condition     = alltrue([for ip in var.operator_ip_ranges : can(cidrhost("${ip}/32", 0)) || (can(cidrhost(ip, 0)) && try(tonumber(split("/", ip)[1]) <= 30, false))])
    error_message = "operator_ip_ranges must be IPv4 addresses or CIDR ranges of /30 or larger."
  }
}

variable "key_vault_purge_protection" {
  description = "Purge protection on the Key Vault. Recommended for production; leave off for throwaway azd environments, whose vault name is reused after `azd down --purge`."
  type        = bool
  default     = false
}
