-- wrk script for `make bench-http`: POST a small event, a new project per
-- connection-ish, and keep wrk's latency percentiles.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil,
    '{"event_type":"task_created","source_type":"wrk","project_id":"p' .. (n % 16) .. '","payload":{"n":' .. n .. '}}')
end
