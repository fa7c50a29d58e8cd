-- GET /api/{user}/tasks?limit=50: one page of the user's newest tasks.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

setup = common.setup
done = function(summary, latency) common.done(summary, latency) end

function init(args)
  local opts = common.options(args)
  -- No request() function: wrk builds this request once per thread and resends its bytes.
  wrk.method = "GET"
  wrk.path = common.tasks_path(opts) .. "?limit=" .. (opts.limit or "50")
  wrk.headers = common.headers(opts)
end
