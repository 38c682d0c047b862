-- wrk script for the pipelined runs: every write carries DEPTH (default 16) concatenated
-- beacon requests built with wrk.format, and wrk counts each response separately (it
-- parses the batch once to learn the pipeline depth).
--
--   wrk -s scripts/wrk/pipeline.lua URL -- [DEPTH]
--
-- URL's path and query are the template; file_id is replaced so that a run cycles
-- through BATCHES * DEPTH distinct ids (1000000 upwards). The batches are built once in
-- init, so the per-write cost in wrk is one table lookup.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local BATCHES = 64
local batches = {}
local next_batch = 0

function init(args)
   local depth = tonumber(args[1]) or 16
   local base = wrk.path:gsub("([?&])file_id=%d+", "%1file_id=%%d")
   if base == wrk.path then
      base = wrk.path .. (wrk.path:find("?", 1, true) and "&" or "?") .. "file_id=%d"
   end
   for b = 1, BATCHES do
      local parts = {}
      for i = 1, depth do
         local file_id = 1000000 + (b - 1) * depth + i
         parts[i] = wrk.format(nil, string.format(base, file_id))
      end
      batches[b] = table.concat(parts)
   end
end

function request()
   next_batch = next_batch % BATCHES + 1
   return batches[next_batch]
end
