-- POST /api/{user}/tasks {"title": ...} with a new Idempotency-Key on every request: what the
-- key costs (the floor ignores the header, so product/floor states it against a plain create).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

setup = common.setup
done = function(summary, latency) common.done(summary, latency) end

local path, headers, prefix
local sent = 0

function init(args)
  local opts = common.options(args)
  path, headers = common.tasks_path(opts), common.headers(opts)
  -- Unique across threads and wrk processes (warm-up, balance restarts): a reused key would
  -- be answered from the kept response and measure a replay instead.
  local random = io.open("/dev/urandom", "rb")
  prefix = random:read(8):gsub(".", function(c) return string.format("%02x", c:byte()) end)
  random:close()
end

function request()
  sent = sent + 1
  headers["Idempotency-Key"] = prefix .. "-" .. sent
  return wrk.format("POST", path, headers, '{"title":"benchmark task"}')
end
