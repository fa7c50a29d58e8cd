-- PATCH /api/{user}/tasks/{id}/complete (no body): flips `completed` on a seeded task.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

setup = common.setup
done = function(summary, latency) common.done(summary, latency) end
common.one_task_scenario("PATCH", "/complete")
