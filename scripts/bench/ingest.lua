-- wrk script for scripts/bench-wrk: Event Grid AdvancedMessageReceived deliveries, the same
-- shape as `handoff bench ingest` (src/simulate.rs): unique event and message ids per wrk thread,
-- 40 messages per customer, and ~20% redeliveries of an earlier event (same ids).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(tid * 7919)
end

local template = '[{"id":"%s","topic":"/subscriptions/demo/resourcegroups/demo/providers/microsoft.communication/communicationservices/demo","subject":"advancedMessage/sender/%s/recipient/bench-channel","eventType":"Microsoft.Communication.AdvancedMessageReceived","eventTime":"2026-11-22T20:00:00Z","data":{"channelType":"whatsapp","messageType":"text","messageId":"%s","content":"Hello, I would like to know where my parcel is, order number 12345.","from":"%s","to":"bench-channel","receivedTimestamp":"2026-11-22T20:00:00Z"},"dataVersion":"1.0","metadataVersion":"1"}]'

function request()
  local n = counter
  if counter > 10 and math.random() < 0.2 then
    n = math.random(0, counter - 1)
  else
    counter = counter + 1
  end
  local key = tid .. "-" .. n
  local from = string.format("+4479%02d%06d", tid, math.floor(n / 40))
  local body = string.format(template, "eg-" .. key, from, "msg-" .. key, from)
  return wrk.format("POST", "/api/v1/channels/whatsapp/webhook",
    {["Content-Type"] = "application/json"}, body)
end
