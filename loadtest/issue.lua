-- wrk script for POST /v1/pools/{id}/issue: every request is a new visitor session.
-- Used by loadtest/issue_bench.sh; set TSUNAGU_KEY and TSUNAGU_POOL in the environment.
local key = os.getenv("TSUNAGU_KEY")
local pool = os.getenv("TSUNAGU_POOL")
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

request = function()
  counter = counter + 1
  local body = string.format('{"params": {"session_id": "t%d-%d-%d", "gclid": "bench", "landing_url": "https://example.jp/lp"}}',
    thread_id, counter, math.random(1, 1000000000))
  return wrk.format("POST", "/v1/pools/" .. pool .. "/issue",
    {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
end
