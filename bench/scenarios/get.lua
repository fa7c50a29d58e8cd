-- GET /api/{user}/tasks/{id}: one task, cycling over the user's seeded tasks.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

setup = common.setup
done = function(summary, latency) common.done(summary, latency) end
common.one_task_scenario("GET", "")
