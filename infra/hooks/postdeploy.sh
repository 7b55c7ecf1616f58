#!/bin/sh
# azd postdeploy hook: after the FIRST deploy, turn the Event Grid subscriptions on.
#
# Event Grid validates a webhook when a subscription is created (SubscriptionValidationEvent, answered
# synchronously by the app). Until azd has deployed the real image, the container app runs a placeholder
# that cannot answer, so the first provision leaves the subscriptions out (ENABLE_EVENT_SUBSCRIPTIONS=false).
# Here the app is running: wait until it is live, flip the switch and provision again.
set -eu

if [ "${ENABLE_EVENT_SUBSCRIPTIONS:-false}" = "true" ]; then
  exit 0
fi

url="${SERVICE_API_URI:?SERVICE_API_URI is not set; run azd provision first}"
if ! command -v curl >/dev/null 2>&1; then
  echo "curl not found: not waiting for ${url}/healthz (azd deploy already waited for the new revision)."
else
  echo "Waiting for ${url}/healthz before creating the Event Grid subscriptions..."
  attempt=0
  until curl --silent --fail --max-time 5 "${url}/healthz" >/dev/null 2>&1; do
    attempt=$((attempt + 1))
    if [ "${attempt}" -ge 60 ]; then
      echo "The app did not answer ${url}/healthz within 5 minutes; fix it, then run:" >&2
      echo "  azd env set ENABLE_EVENT_SUBSCRIPTIONS true && azd provision" >&2
      exit 1
    fi
    sleep 5
  done
fi

azd env set ENABLE_EVENT_SUBSCRIPTIONS true
# Also in this process's environment, in case azd prefers it over the .env file for the child provision.
ENABLE_EVENT_SUBSCRIPTIONS=true
export ENABLE_EVENT_SUBSCRIPTIONS
echo "Provisioning again to create the Event Grid subscriptions (validation handshake against the live app)..."
azd provision --no-prompt
