-- wrk script for POST /v1/pools/{id}/issue: every request is a new visitor session.
-- Used by loadtest/issue_bench.sh; set TSUNAGU_KEY and TSUNAGU_POOL in the environment.
local key = os.getenv("TSUNAGU_KEY")
local pool = os.getenv("TSUNAGU_POOL")
local threads = 0
local counter = 0

-- Runs in the main state: gives each thread a global `id` (not shadowed by a local).
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

request = function()
  counter = counter + 1
  local body = string.format('{"params": {"session_id": "t%d-%d", "gclid": "bench", "landing_url": "https://example.jp/lp"}}', id, counter)
  return wrk.format("POST", "/v1/pools/" .. pool .. "/issue",
    {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
end
