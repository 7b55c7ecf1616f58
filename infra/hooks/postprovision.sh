#!/bin/sh
# azd postprovision hook: print where Event Grid and Meta must point, and the manual steps left.
# azd passes the Terraform outputs (and the azd environment) as environment variables.
set -eu

status="not yet: created by the postdeploy hook once the app runs"
if [ "${EVENT_SUBSCRIPTIONS_ENABLED:-false}" = "true" ]; then
  status="created"
fi

cat <<MSG

handoff is provisioned (resource group ${AZURE_RESOURCE_GROUP:-?}).

  App (PUBLIC_BASE_URL)      ${SERVICE_API_URI:-?}
  WhatsApp events (ACS)      ${WHATSAPP_WEBHOOK_URL:-?}?code=<EVENT_GRID_SECRET>
  Incoming calls (ACS)       ${INCOMING_CALL_WEBHOOK_URL:-?}?code=<EVENT_GRID_SECRET>
  Meta webhook (if used)     ${META_WEBHOOK_URL:-?}
  Event Grid subscriptions   ${status}
  Dead letters               storage account ${DEAD_LETTER_STORAGE_ACCOUNT:-?}, container ${DEAD_LETTER_CONTAINER:-?}
  Secrets                    Key Vault ${AZURE_KEY_VAULT_NAME:-?} (event-grid-secret, admin-api-key, ...)

Manual steps (once per environment, see docs/deployment.md):
  1. Connect your WhatsApp Business Account to ACS ${ACS_RESOURCE_NAME:-?}
     (portal: Communication Services > Advanced Messaging > Channels > Connect), then
     azd env set ACS_WHATSAPP_CHANNEL_ID <channel registration id> && azd provision
  2. Submit the 'conversation_continuation' template (UTILITY, en_US, 2 body parameters)
     in WhatsApp Manager and wait until it is approved.
  3. Buy or port a phone number in ACS ${ACS_RESOURCE_NAME:-?} with inbound calling;
     IncomingCall events for it reach the app through the subscription above.
MSG

if [ -z "${ACS_WHATSAPP_CHANNEL_ID:-}" ] && [ "${WHATSAPP_PROVIDER_EFFECTIVE:-acs}" = "acs" ]; then
  echo "Note: ACS_WHATSAPP_CHANNEL_ID is not set yet: the app cannot send WhatsApp messages until step 1 is done."
fi
