-- wrk script for bench/ratings.sh. Args: <tokens file> <books file> <what> [<stars>], where <what>
-- is "rate" (POST /api/books/{id}/ratings, round-robin over customers and books, 1-5 stars) or
-- "read" (GET /api/books/{id}, round-robin over the books), and <stars> "book" or "random" (below).
local tokens, books, what = {}, {}, "rate"
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
  tokens, books, what = lines(args[1]), lines(args[2]), args[3] or "rate"
  star_mode = args[4] or "book"
  math.randomseed(os.time() + thread_id)
  statuses = {}
end

function request()
  counter = counter + 1
  local n = counter * 7919 + thread_id
  local book = books[(n % #books) + 1]
  if what == "read" then
    return wrk.format("GET", "/api/books/" .. book)
  end
  local token = tokens[(math.floor(n / #books) % #tokens) + 1]
  -- "book" (default): a book's every rating has the same stars, so a re-rating never moves its
  -- totals; "random": 1-5 at random, so most re-ratings do.
  local stars = (n % 5) + 1
  if star_mode == "random" then stars = math.random(1, 5) end
  local body = string.format('{"stars":%d,"text":"bench %d"}', stars, counter)
  return wrk.format("POST", "/api/books/" .. book .. "/ratings", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
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
