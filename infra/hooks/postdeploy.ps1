# azd postdeploy hook (Windows): after the FIRST deploy, turn the Event Grid subscriptions on.
# See postdeploy.sh for the reasoning: Event Grid validates the webhook when a subscription is created,
# so the subscriptions can only be created once the real image answers the handshake.
$ErrorActionPreference = 'Stop'

if ($env:ENABLE_EVENT_SUBSCRIPTIONS -eq 'true') { exit 0 }

$url = $env:SERVICE_API_URI
if ([string]::IsNullOrEmpty($url)) { throw 'SERVICE_API_URI is not set; run azd provision first' }

Write-Host "Waiting for $url/healthz before creating the Event Grid subscriptions..."
$ready = $false
for ($attempt = 0; $attempt -lt 60 -and -not $ready; $attempt++) {
    try {
        $response = Invoke-WebRequest -Uri "$url/healthz" -UseBasicParsing -TimeoutSec 5
        $ready = $response.StatusCode -eq 200
    } catch {
        $ready = $false
    }
    if (-not $ready) { Start-Sleep -Seconds 5 }
}
if (-not $ready) {
    Write-Error "The app did not answer $url/healthz within 5 minutes; fix it, then run: azd env set ENABLE_EVENT_SUBSCRIPTIONS true; azd provision"
    exit 1
}

azd env set ENABLE_EVENT_SUBSCRIPTIONS true
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
$env:ENABLE_EVENT_SUBSCRIPTIONS = 'true'
Write-Host 'Provisioning again to create the Event Grid subscriptions (validation handshake against the live app)...'
azd provision --no-prompt
exit $LASTEXITCODE
