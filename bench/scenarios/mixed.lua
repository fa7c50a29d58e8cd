-- 70% list, 15% create, 10% toggle, 5% delete, in a fixed 20-request cycle (exact shares, and
-- the same sequence on every run).
--
-- A delete must hit a task that exists, exactly once: each wrk thread deletes only ids that it
-- owns, first those its own creates returned (read from the 201 bodies), then its slice of a
-- pool that run.py seeds before the run (pool_first..pool_last, split over the threads). Each
-- thread has its own Lua state and sends one request at a time per connection, so no two
-- deletes can take the same id.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

setup = common.setup

local PATTERN = "LCLTLLLDLCLLTLLLCLLL" -- 14 L, 3 C, 2 T, 1 D
local list_req, create_req, tasks_path, headers, next_toggle
local step = 0
local created = {}
local pool_next, pool_last
sent = { L = 0, C = 0, T = 0, D = 0, fallback = 0 }

function init(args)
  local opts = common.options(args)
  tasks_path, headers = common.tasks_path(opts), common.headers(opts)
  list_req = wrk.format("GET", tasks_path .. "?limit=50", headers)
  create_req = wrk.format("POST", tasks_path, headers, '{"title":"benchmark task"}')
  next_toggle = common.id_cycle(opts)
  -- This thread's slice of the pre-seeded pool.
  local first, last = tonumber(opts.pool_first), tonumber(opts.pool_last)
  local threads = tonumber(opts.threads)
  local per_thread = math.floor((last - first + 1) / threads)
  pool_next = first + thread_index * per_thread
  pool_last = pool_next + per_thread - 1
  step = thread_index * 5
end

local function take_deletable()
  local n = #created
  if n > 0 then
    local id = created[n]
    created[n] = nil
    return id
  end
  if pool_next <= pool_last then
    pool_next = pool_next + 1
    return pool_next - 1
  end
  return nil
end

function request()
  step = step + 1
  local kind = PATTERN:sub((step - 1) % 20 + 1, (step - 1) % 20 + 1)
  if kind == "D" then
    local id = take_deletable()
    if id then
      sent.D = sent.D + 1
      return wrk.format("DELETE", tasks_path .. "/" .. id, headers)
    end
    -- Never expected with a pool sized by run.py; counted so that the report would show it.
    sent.fallback = sent.fallback + 1
    kind = "C"
  end
  sent[kind] = sent[kind] + 1
  if kind == "L" then
    return list_req
  elseif kind == "C" then
    return create_req
  end
  return wrk.format("PATCH", tasks_path .. "/" .. next_toggle() .. "/complete", headers)
end

function response(status, headers, body)
  -- Only a create answers 201; its body starts with the id (orjson keeps the field order).
  if status == 201 then
    local id = body:match('^{"id":(%d+)')
    if id then
      created[#created + 1] = tonumber(id)
    end
  end
end

function done(summary, latency)
  local total = { L = 0, C = 0, T = 0, D = 0, fallback = 0 }
  for _, thread in ipairs(common.threads) do
    local counts = thread:get("sent")
    for key, value in pairs(counts) do
      total[key] = total[key] + value
    end
  end
  common.done(summary, latency, string.format(
    ',"sent":{"list":%d,"create":%d,"toggle":%d,"delete":%d,"delete_fallback":%d}',
    total.L, total.C, total.T, total.D, total.fallback))
end
