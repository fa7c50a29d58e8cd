-- Shared by every scenario: the arguments, the auth header and a machine-readable summary.
-- Each scenario loads this file with dofile() from its own directory (see the top of list.lua).
local common = {}

-- wrk gives init() the words after `--` on its command line; ours are key=value pairs.
function common.options(args)
  local opts = {}
  for _, arg in ipairs(args) do
    local key, value = arg:match("^([%w_]+)=(.*)$")
    if key then
      opts[key] = value
    end
  end
  return opts
end

function common.headers(opts)
  return {
    ["Authorization"] = "Bearer " .. opts.token,
    ["Content-Type"] = "application/json",
  }
end

function common.tasks_path(opts)
  return "/api/" .. opts.user .. "/tasks"
end

-- setup() runs in wrk's main Lua state once per thread, before that thread's init(): it numbers
-- the threads (so each one can take its own slice of ids) and keeps them for done().
common.threads = {}
function common.setup(thread)
  table.insert(common.threads, thread)
  thread:set("thread_index", #common.threads - 1)
end

-- One line that run.py parses: wrk's own summary is for people, this one is for the report.
-- Latencies are in microseconds; "status" errors are responses with a status >= 400.
function common.done(summary, latency, extra)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), extra or ""))
end

-- Cycles through the ids first..last, each thread from its own starting point, so that
-- concurrent toggles rarely wait on the same row lock.
function common.id_cycle(opts)
  local first, last = tonumber(opts.first), tonumber(opts.last)
  local span = last - first + 1
  local i = (thread_index or 0) * 7
  return function()
    i = i + 1
    return first + (i % span)
  end
end

-- A scenario that sends METHOD /api/{user}/tasks/{id}SUFFIX, cycling over the seeded ids:
-- defines wrk's global init() and request() for the calling script.
function common.one_task_scenario(method, suffix)
  local path, headers, next_id
  init = function(args)
    local opts = common.options(args)
    path, headers, next_id = common.tasks_path(opts) .. "/", common.headers(opts), common.id_cycle(opts)
  end
  request = function()
    return wrk.format(method, path .. next_id() .. suffix, headers)
  end
end

return common
