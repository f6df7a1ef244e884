-- wrk script for bench/checkout.sh: POST /api/checkout with a fresh Idempotency-Key per request,
-- round-robin over pre-made customers (tokens) and books. Args: <tokens file> <books file> <mode>.
local tokens, books, mode = {}, {}, "2pc"
-- `thread_id` is the global each thread gets from setup(); a local here would hide it.
local counter = 0
local threads = {}

local function lines(path)
  local out = {}
  for line in io.lines(path) do if #line > 0 then out[#out + 1] = line end end
  return out
end

function setup(thread)
  thread:set("thread_id", #threads + 1)
  threads[#threads + 1] = thread
end

function init(args)
  tokens, books, mode = lines(args[1]), lines(args[2]), args[3] or "2pc"
  statuses = {}
end

function request()
  counter = counter + 1
  local n = counter * 7919 + thread_id
  local token = tokens[(n % #tokens) + 1]
  local book = books[(n % #books) + 1]
  local body = string.format('{"mode":"%s","items":[{"book_id":"%s","quantity":1}]}', mode, book)
  return wrk.format("POST", "/api/checkout", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("bench-%s-%d-%d-%d", mode, thread_id, counter, os.time()),
  }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for status, count in pairs(s) do merged[status] = (merged[status] or 0) + count end
  end
  local parts = {}
  for status, count in pairs(merged) do parts[#parts + 1] = string.format("%d=%d", status, count) end
  io.write("statuses " .. table.concat(parts, " ") .. "\n")
end
