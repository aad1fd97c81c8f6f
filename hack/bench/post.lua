-- wrk script: POST an AdmissionReview body over and over, the way kube-apiserver calls a
-- webhook, and print the result as one JSON line. Usage:
--   wrk ... -s post.lua URL -- BODY_FILE same|distinct [STOP_AFTER DONE_FILE]
-- distinct: every request's pod differs (the first 8 hex digits of its checksum/config
-- annotation count up), so nothing the server remembers about a pod can answer the next one.
-- STOP_AFTER (optional, the 100k-review run): after that many responses a thread stops and
-- creates DONE_FILE; wrk itself runs out its duration unless told to stop (SIGINT), which the
-- driver does once DONE_FILE exists.
-- wrk counts only statuses >= 400 as errors; response() below counts every non-2xx.

local threads = {}
local MARK = '"checksum/config":"'

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  distinct = args[2] == "distinct"
  stop_after = tonumber(args[3] or "0")
  done_file = args[4]
  responses = 0
  non2xx = 0
  sent = 0
  if distinct then
    local at = assert(string.find(body, MARK, 1, true), "no checksum/config annotation")
    local value = at + #MARK
    prefix = body:sub(1, value - 1)
    suffix = body:sub(value + 8)
    -- The counter has a fixed width, so the Content-Length of every request is the same.
    head = wrk.format("POST", "/mutate?timeout=10s",
                      {["Content-Type"] = "application/json"}, body)
    head = head:sub(1, #head - #body)
  else
    req = wrk.format("POST", "/mutate?timeout=10s",
                     {["Content-Type"] = "application/json"}, body)
  end
end

function request()
  if distinct then
    sent = sent + 1
    return head .. prefix .. string.format("%08x", sent) .. suffix
  end
  return req
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  if stop_after > 0 and responses == stop_after then
    if done_file then
      assert(io.open(done_file, "w")):close()
    end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local non2xx_total = 0
  for _, thread in ipairs(threads) do
    non2xx_total = non2xx_total + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"non2xx":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, non2xx_total, e.connect, e.read, e.write, e.status, e.timeout))
end
