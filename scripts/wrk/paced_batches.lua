-- wrk script for the back-end load test (scripts/load_backend.py): POST /log JSON batches at
-- a fixed total rate, paced with wrk's delay() hook. The offered rate does not depend on
-- delivery: the collector answers once an event is in its WAL, never waiting for MySQL, and
-- its answers take far less than the pacing interval, so pacing by delay() holds the rate.
-- The rate wrk really achieved (requests x batch / duration) is what the report quotes.
--
--   wrk -t1 -cC -s scripts/wrk/paced_batches.lua URL -- RATE BATCH C FILES DOMAINS
--
-- RATE events/s in total, BATCH events per request (<= ingest.max_batch_events), C the -c
-- value (the pacing interval is per connection), FILES distinct file ids, DOMAINS distinct
-- domains; events cycle play/pause/start/end. Bodies are built once in init.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local BODIES = 512
local EVENTS = { "play", "pause", "start", "end" }
local bodies = {}
local next_body = 0
local interval_ms = 1
local owed_ms = 0

function init(args)
   local rate = tonumber(args[1])
   local batch = tonumber(args[2]) or 100
   local conns = tonumber(args[3]) or 1
   local files = tonumber(args[4]) or 3000
   local domains = tonumber(args[5]) or 200
   interval_ms = conns * batch * 1000 / rate
   local n = 0
   for b = 1, BODIES do
      local items = {}
      for i = 1, batch do
         n = n + 1
         -- Co-prime strides so file, domain and event vary independently.
         items[i] = string.format('{"event":"%s","domain":"site%d.example.org","file_id":%d}',
            EVENTS[n % 4 + 1], (n * 7) % domains, 1 + (n * 13) % files)
      end
      bodies[b] = wrk.format("POST", nil, { ["Content-Type"] = "application/json" },
         "[" .. table.concat(items, ",") .. "]")
   end
end

-- wrk waits this many ms after a response before the connection's next request; the
-- fraction below 1 ms is carried to the next call so the mean interval is exact.
function delay()
   owed_ms = owed_ms + interval_ms
   local whole = math.floor(owed_ms)
   owed_ms = owed_ms - whole
   return whole
end

function request()
   next_body = next_body % BODIES + 1
   return bodies[next_body]
end
