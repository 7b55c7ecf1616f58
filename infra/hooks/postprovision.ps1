# azd postprovision hook (Windows): print where Event Grid and Meta must point, and the manual steps left.
# azd passes the Terraform outputs (and the azd environment) as environment variables.
$ErrorActionPreference = 'Stop'

function Get-Setting([string]$Name, [string]$Default = '?') {
    $value = [Environment]::GetEnvironmentVariable($Name)
    if ([string]::IsNullOrEmpty($value)) { return $Default }
    return $value
}

$status = 'not yet: created by the postdeploy hook once the app runs'
if ((Get-Setting 'EVENT_SUBSCRIPTIONS_ENABLED' 'false') -eq 'true') { $status = 'created' }
$acs = Get-Setting 'ACS_RESOURCE_NAME'

Write-Host ''
Write-Host "handoff is provisioned (resource group $(Get-Setting 'AZURE_RESOURCE_GROUP'))."
Write-Host ''
Write-Host "  App (PUBLIC_BASE_URL)      $(Get-Setting 'SERVICE_API_URI')"
Write-Host "  WhatsApp events (ACS)      $(Get-Setting 'WHATSAPP_WEBHOOK_URL')?code=<EVENT_GRID_SECRET>"
Write-Host "  Incoming calls (ACS)       $(Get-Setting 'INCOMING_CALL_WEBHOOK_URL')?code=<EVENT_GRID_SECRET>"
Write-Host "  Meta webhook (if used)     $(Get-Setting 'META_WEBHOOK_URL')"
Write-Host "  Event Grid subscriptions   $status"
Write-Host "  Dead letters               storage account $(Get-Setting 'DEAD_LETTER_STORAGE_ACCOUNT'), container $(Get-Setting 'DEAD_LETTER_CONTAINER')"
Write-Host "  Secrets                    Key Vault $(Get-Setting 'AZURE_KEY_VAULT_NAME') (event-grid-secret, admin-api-key, ...)"
Write-Host ''
Write-Host 'Manual steps (once per environment, see docs/deployment.md):'
Write-Host "  1. Connect your WhatsApp Business Account to ACS $acs"
Write-Host '     (portal: Communication Services > Advanced Messaging > Channels > Connect), then'
Write-Host '     azd env set ACS_WHATSAPP_CHANNEL_ID <channel registration id>; azd provision'
Write-Host "  2. Submit the 'conversation_continuation' template (UTILITY, en_US, 2 body parameters)"
Write-Host '     in WhatsApp Manager and wait until it is approved.'
Write-Host "  3. Buy or port a phone number in ACS $acs with inbound calling;"
Write-Host '     IncomingCall events for it reach the app through the subscription above.'

if ((Get-Setting 'ACS_WHATSAPP_CHANNEL_ID' '') -eq '' -and (Get-Setting 'WHATSAPP_PROVIDER_EFFECTIVE' 'acs') -eq 'acs') {
    Write-Host 'Note: ACS_WHATSAPP_CHANNEL_ID is not set yet: the app cannot send WhatsApp messages until step 1 is done.'
}
