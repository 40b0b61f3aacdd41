-- examples/rest.lua tested the way an app developer tests their own app:
-- lariat.test starts it in a real lariat on a loopback port (README,
-- "Testing your app"). Needs the built binary ($LARIAT_BIN or build/lariat)
-- and LuaSocket; pending without them.
local has_socket = pcall(require, "socket")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local json = require("lariat.json")

local function binary()
  local bin = os.getenv("LARIAT_BIN")
  if bin and bin ~= "" then return bin end
  local f = io.open(here .. "../../build/lariat", "rb")
  if f then f:close() return here .. "../../build/lariat" end
end

;((has_socket and binary()) and describe or pending)("examples/rest.lua under lariat.test", function()
  local lt = require "lariat.test"
  local app

  setup(function() app = lt.start(here .. "../../examples/rest.lua", { bin = binary() }) end)
  teardown(function() if app then assert.is_true(app:stop()) end end)

  it("creates, reads, updates and deletes a todo", function()
    local status, headers, body = app:post("/todos", { json = { title = "write docs" } })
    assert.equal(201, status)
    local todo = json.decode(body)
    todo.id = math.tointeger(todo.id) -- JSON numbers decode as floats
    assert.equal("/todos/" .. todo.id, headers.location)
    assert.truthy(headers["x-request-id"])

    status, _, body = app:get("/todos/" .. todo.id)
    assert.same({ 200, "write docs", false }, { status, json.decode(body).title, json.decode(body).done })

    status, _, body = app:patch("/todos/" .. todo.id, { json = { done = true } })
    assert.same({ 200, true }, { status, json.decode(body).done })

    status, _, body = app:get("/todos", { query = { done = "true" } })
    assert.equal(200, status)
    assert.equal(1, json.decode(body).count)

    assert.equal(204, (app:delete("/todos/" .. todo.id)))
    assert.equal(404, (app:get("/todos/" .. todo.id)))
  end)

  it("answers mistakes with JSON", function()
    local status, headers, body = app:post("/todos", { json = { title = "" } })
    assert.equal(422, status)
    assert.equal("application/json", headers["content-type"])
    assert.truthy(json.decode(body).fields.title)

    status, headers, body = app:post("/todos", { body = "{oops", headers = { ["content-type"] = "application/json" } })
    assert.equal(400, status)
    assert.matches("^malformed JSON", json.decode(body).error)

    status, _, body = app:get("/nope", { headers = { accept = "application/json" } })
    assert.same({ 404, "not found" }, { status, json.decode(body).error })
    assert.equal(404, (app:get("/todos/abc"))) -- "int" constraint: not a route
  end)

  it("HEAD has headers and no body", function()
    local status, headers, body = app:head("/todos")
    assert.same({ 200, "application/json", "" }, { status, headers["content-type"], body })
  end)
end)

;((has_socket and binary()) and describe or pending)("lariat.test WebSocket client", function()
  local lt = require "lariat.test"
  local app

  setup(function() app = lt.start(here .. "../../examples/echo_ws.lua", { bin = binary() }) end)
  teardown(function() if app then app:stop() end end)

  it("sends, receives and closes", function()
    local ws = assert(app:ws("/echo"))
    assert.is_true(ws:send("hello"))
    assert.same({ "hello", "text" }, { ws:recv() })
    local big = ("\0\1\2"):rep(30000)
    ws:send(big, "binary")
    assert.same({ big, "binary" }, { ws:recv() })
    assert.equal(1000, (ws:close(1000, "bye")))
    assert.same({ nil, "closed" }, { ws:send("late") })
  end)

  it("reports a refused upgrade with its status", function()
    local ws, err = app:ws("/nope")
    assert.is_nil(ws)
    assert.equal("status 404", err)
  end)

  it("reports a start failure with the server's message", function()
    local f = os.tmpname()
    local h = io.open(f, "w"); h:write("return 42\n"); h:close()
    local ok, err = pcall(lt.start, f, { bin = binary() })
    os.remove(f)
    assert.is_false(ok)
    assert.matches("must return a lariat app", err)
  end)
end)
