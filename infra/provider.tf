# Providers and state for the handoff deployment.
#
# Versions are pinned exactly: the configuration is checked offline (scripts/check-infra) against the
# argument names of these releases, and there is no lock file in the repository to pin them otherwise.
terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "= 4.55.0"
    }
    azapi = {
      source  = "Azure/azapi"
      version = "= 2.8.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "= 3.7.2"
    }
    time = {
      source  = "hashicorp/time"
      version = "= 0.13.1"
    }
  }

  # Local state (azd keeps it under .azure/<env>/infra/). For a shared or CI-driven environment use a
  # remote backend instead, e.g. copy infra/backend.tf.example to infra/backend.tf (see docs/deployment.md).
}

provider "azurerm" {
  # null falls back to ARM_SUBSCRIPTION_ID / the Azure CLI default subscription.
  subscription_id = var.subscription_id != "" ? var.subscription_id : null

  # The dead-letter storage account has shared keys disabled: never fall back to key auth.
  storage_use_azuread = true

  features {
    key_vault {
      # `azd down --purge` purges explicitly; a plain destroy keeps the soft-deleted vault recoverable.
      purge_soft_delete_on_destroy    = false
      recover_soft_deleted_key_vaults = true
    }
    cognitive_account {
      purge_soft_delete_on_destroy = false
    }
    resource_group {
      prevent_deletion_if_contains_resources = true
    }
    storage {
      # The dead-letter account is key-less; containers are created through ARM (storage_account_id), so the
      # provider never needs to reach the blob data plane.
      data_plane_available = false
    }
  }
}

provider "azapi" {
  subscription_id = var.subscription_id != "" ? var.subscription_id : null
}
