-- lariat.metrics: Prometheus metrics of the app, served with lariat's own
-- (requests, latency, connections, Lua memory, ...) at GET /metrics of the
-- --metrics listener, or at a route of the app with metrics.handler().
--
--   local jobs = lariat.metrics.counter("jobs_total", "Jobs run", { "kind" })
--   jobs:inc(1, { kind = "purge" })          -- or jobs:labels("purge"):inc()
--   local queue = lariat.metrics.gauge("queue_depth", "Items waiting")
--   queue:set(12); queue:inc(); queue:dec(2)
--   local t = lariat.metrics.histogram("upstream_seconds", "Upstream time", {}, { buckets = { 0.1, 1 } })
--   t:observe(0.25)
--   app:get("/metrics", lariat.metrics.handler())
--
-- A metric is shared by every worker and app version: defining the same name
-- again (each worker runs the app file, and every reload) returns the same
-- metric, so values survive reloads; the same name with another type or
-- labels is an error.
local runtime = require "lariat.runtime"

local M = {}

local function core()
  local c = runtime.core()
  if not c then error("lariat.metrics needs the lariat server (lariat.core is not loaded)", 3) end
  return c
end

local Metric = {}
Metric.__index = Metric
local Bound = {}
Bound.__index = Bound

local function new(kind, name, help, labels, opts)
  if type(name) ~= "string" or not name:match("^[%a_:][%w_:]*$") then
    error("lariat.metrics." .. kind .. ": bad metric name " .. tostring(name), 3)
  end
  labels = labels or {}
  for _, l in ipairs(labels) do
    if type(l) ~= "string" or not l:match("^[%a_][%w_]*$") or l:sub(1, 2) == "__" or l == "le" then
      error("lariat.metrics." .. kind .. ": bad label name " .. tostring(l), 3)
    end
  end
  local id = core().metric_new(kind, name, help or name, labels, opts and opts.buckets)
  return setmetatable({ id = id, kind = kind, name = name, label_names = labels }, Metric)
end

function M.counter(name, help, labels) return new("counter", name, help, labels) end
function M.gauge(name, help, labels) return new("gauge", name, help, labels) end
function M.histogram(name, help, labels, opts) return new("histogram", name, help, labels, opts) end

-- label values, in the order of the names: from {name = value} or {value, ...}
local function values(m, lv)
  local names = m.label_names
  if #names == 0 then return end
  if type(lv) ~= "table" then error(("metric %s: label values needed (%s)"):format(m.name, table.concat(names, ", ")), 3) end
  local out = {}
  for i, n in ipairs(names) do
    local v = lv[n]
    if v == nil then v = lv[i] end
    if v == nil then error(("metric %s: label %s missing"):format(m.name, n), 3) end
    out[i] = tostring(v)
  end
  return table.unpack(out, 1, #names)
end

local function update(m, op, v, ...)
  if type(v) ~= "number" then error(("metric %s: value must be a number"):format(m.name), 3) end
  core().metric_update(m.id, op, v, ...)
end

function Metric:inc(v, lv)
  v = v or 1
  if self.kind == "histogram" then error("metric " .. self.name .. ": a histogram observes", 2) end
  if self.kind == "counter" and v < 0 then error("metric " .. self.name .. ": a counter only goes up", 2) end
  update(self, "add", v, values(self, lv))
end

function Metric:dec(v, lv)
  if self.kind ~= "gauge" then error("metric " .. self.name .. ": only a gauge goes down", 2) end
  update(self, "add", -(v or 1), values(self, lv))
end

function Metric:set(v, lv)
  if self.kind ~= "gauge" then error("metric " .. self.name .. ": only a gauge is set", 2) end
  update(self, "set", v, values(self, lv))
end

function Metric:observe(v, lv)
  if self.kind ~= "histogram" then error("metric " .. self.name .. ": only a histogram observes", 2) end
  update(self, "observe", v, values(self, lv))
end

-- labels(v1, v2, ...) or labels{name = v}: the metric with those values bound
function Metric:labels(...)
  local lv = select("#", ...) == 1 and type((...)) == "table" and (...) or { ... }
  return setmetatable({ m = self, lv = lv }, Bound)
end

for _, op in ipairs { "inc", "dec", "set", "observe" } do
  Bound[op] = function(self, v) return Metric[op](self.m, v, self.lv) end
end

-- handler() → a route handler answering the text exposition format (all
-- workers, lariat's metrics and the app's). Also turns request counting on.
function M.handler()
  local c = core()
  c.metrics_want()
  return function()
    return 200, { ["content-type"] = "text/plain; version=0.0.4; charset=utf-8" }, c.metrics_text()
  end
end

-- text() → the exposition text
function M.text() return core().metrics_text() end

return M
