-- POST /api/{user}/tasks {"title": ...}: creates a task (and upserts the user row).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

setup = common.setup
done = function(summary, latency) common.done(summary, latency) end

function init(args)
  local opts = common.options(args)
  wrk.method = "POST"
  wrk.path = common.tasks_path(opts)
  wrk.headers = common.headers(opts)
  wrk.body = '{"title":"benchmark task"}'
end
