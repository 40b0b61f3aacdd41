-- The examples load and behave as documented (with the fake core).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local fake = dofile(here .. "fake.lua")
local lariat = require "lariat"
local json = lariat.json

local function load(name)
  fake.core()
  local app = dofile(here .. "../../examples/" .. name)
  return lariat.load_app(app, name)
end

-- like C: an http_error raised by a handler becomes its response
local function run(dispatch, t)
  local req = fake.req(t)
  local ok, s, h, b = pcall(dispatch, req, req.method, req.path)
  if not ok then
    assert.is_table(s, tostring(s))
    return s.status, s.headers, s.body, req
  end
  return s, h, b, req
end

describe("examples/rest.lua", function()
  local d = load("rest.lua")
  local JSON_CT = { ["content-type"] = "application/json" }

  it("creates, reads, updates, lists and deletes todos", function()
    local s, h, b = run(d, { method = "POST", path = "/todos", headers = JSON_CT, body = '{"title":"write docs"}' })
    assert.equal(201, s)
    assert.equal("/todos/1", h.location)
    assert.same({ id = 1, title = "write docs", done = false }, json.decode(b))
    s, _, b = run(d, { method = "PATCH", path = "/todos/1", body = '{"done":true}' })
    assert.equal(200, s)
    assert.is_true(json.decode(b).done)
    s, _, b = run(d, { path = "/todos/1" })
    assert.same({ id = 1, title = "write docs", done = true }, json.decode(b))
    s, _, b = run(d, { path = "/todos", qs = "done=true" })
    assert.equal(1, json.decode(b).count)
    assert.equal(204, (run(d, { method = "DELETE", path = "/todos/1" })))
    assert.equal(404, (run(d, { path = "/todos/1" })))
    s, _, b = run(d, { path = "/todos" })
    assert.equal(0, json.decode(b).count)
    assert.matches('"todos":%[%]', b) -- an empty list stays a JSON array
  end)

  it("answers 422 JSON naming the invalid fields", function()
    local s, h, b = run(d, { method = "POST", path = "/todos", body = '{"title":"","done":"yes","x":1}' })
    assert.equal(422, s)
    assert.equal("application/json", h["content-type"])
    assert.same({ error = "validation failed",
                  fields = { title = "is required and must be a non-empty string",
                             done = "must be true or false", x = "is not a known field" } },
                json.decode(b))
  end)

  it("answers 400 to malformed JSON and 404 to non-integer ids", function()
    assert.equal(400, (run(d, { method = "POST", path = "/todos", body = "{" })))
    assert.equal(404, (run(d, { path = "/todos/abc" })))
  end)
end)

describe("examples/sse_clock.lua", function()
  it("streams tick events", function()
    local d = load("sse_clock.lua")
    local _, _, _, req = run(d, { path = "/clock", qs = "count=2" })
    assert.equal("text/event-stream; charset=utf-8", req.replied.headers["content-type"])
    assert.equal("retry: 2000\ndata: connected\n\n", req.written[1])
    assert.matches('^event: tick\nid: 1\ndata: {.*"n":1.*}\n\n$', req.written[2])
    assert.matches("^event: tick\nid: 2\n", req.written[3])
  end)
end)

local has_lfs = pcall(require, "lfs")
;(has_lfs and describe or pending)("examples/static_site.lua", function()
  it("serves public/index.html and the api route", function()
    local d = load("static_site.lua")
    local s, h, b = run(d, { path = "/", peer = "127.0.0.1" })
    assert.equal(200, s)
    assert.equal("text/html; charset=utf-8", h["content-type"])
    assert.matches("Served by lariat.static", b)
    assert.equal("text/css; charset=utf-8", select(2, run(d, { path = "/css/site.css" }))["content-type"])
    assert.equal(200, (run(d, { path = "/api/time" })))
    assert.equal(404, (run(d, { path = "/../static_site.lua" })))
  end)
end)

describe("examples/upload.lua", function()
  local d = load("upload.lua")

  it("greets from an urlencoded form and validates it", function()
    local ct = { ["content-type"] = "application/x-www-form-urlencoded" }
    local _, _, b = run(d, { method = "POST", path = "/hello", headers = ct, body = "name=Ann&color=red" })
    assert.same({ greeting = "hello Ann", color = "red" }, json.decode(b))
    assert.equal(422, (run(d, { method = "POST", path = "/hello", headers = ct, body = "color=red" })))
  end)

  it("streams multipart uploads", function()
    local body = table.concat({ "--B", 'Content-Disposition: form-data; name="title"', "", "notes",
      "--B", 'Content-Disposition: form-data; name="file"; filename="C:\\\\tmp\\\\a.txt"',
      "Content-Type: text/plain", "", string.rep("z", 3000), "--B--", "" }, "\r\n")
    local _, _, b = run(d, { method = "POST", path = "/upload",
      headers = { ["content-type"] = "multipart/form-data; boundary=B" }, chunks = { body:sub(1, 100), body:sub(101) } })
    local out = json.decode(b)
    assert.equal("notes", out.fields.title)
    assert.same({ "a.txt", 3000, "text/plain" }, { out.files[1].filename, out.files[1].size, out.files[1].content_type })
  end)
end)
