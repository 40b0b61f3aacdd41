-- The lariat module surface: json, log, http_error, sleep/now, url, httpdate.
local fake = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "fake.lua")
local lariat = require "lariat"
local runtime = require "lariat.runtime"

describe("lariat.json", function()
  it("round-trips values and exposes null", function()
    local v = lariat.json.decode('{"a":[1,2.5,"x",null],"b":true}')
    assert.same({ 1, 2.5, "x", lariat.json.null }, v.a)
    assert.is_true(v.b)
    assert.same(v, lariat.json.decode(lariat.json.encode(v)))
  end)

  it("encodes json.array() tables as arrays even when empty", function()
    local j = lariat.json
    assert.equal("[]", j.encode(j.array()))
    assert.equal('{"items":[]}', j.encode({ items = j.array() }))
    assert.equal('[[],{}]', j.encode({ j.array(), {} }))
    assert.equal("[1,2]", j.encode(j.array { 1, 2 }))
  end)

  it("returns nil, message on malformed input instead of raising", function()
    local v, err = lariat.json.decode("{oops")
    assert.is_nil(v)
    assert.is_string(err)
    assert.is_nil((lariat.json.decode("NaN")))
    assert.is_nil((lariat.json.decode(nil)))
  end)
end)

describe("lariat.log", function()
  it("formats when given arguments and passes plain messages as is", function()
    local core = fake.core()
    lariat.log.info("user %s logged in (%d)", "ann", 3)
    lariat.log.warn("100% plain")
    lariat.log.error("e")
    lariat.log.debug("d")
    assert.same({
      { level = "info", msg = "user ann logged in (3)" },
      { level = "warn", msg = "100% plain" },
      { level = "error", msg = "e" },
      { level = "debug", msg = "d" },
    }, core.logs)
  end)
end)

describe("lariat.http_error", function()
  it("carries status, headers and a text body", function()
    local e = lariat.http_error(404, "no such user", { ["X-Hint"] = "try 7" })
    assert.same({ 404, "no such user\n", "text/plain; charset=utf-8", "try 7" },
      { e.status, e.body, e.headers["content-type"], e.headers["x-hint"] })
    assert.equal("http error 404: no such user", tostring(e))
  end)

  it("uses the reason phrase by default and JSON for tables", function()
    assert.equal("bad request\n", lariat.http_error(400).body)
    local e = lariat.http_error(422, { errors = { name = "required" } })
    assert.equal("application/json", e.headers["content-type"])
    assert.same({ errors = { name = "required" } }, lariat.json.decode(e.body))
  end)

  it("refuses a status that is not an HTTP status", function()
    assert.has_error(function() lariat.http_error(42) end)
    assert.has_error(function() lariat.http_error("404") end)
  end)
end)

describe("lariat.sleep and lariat.now", function()
  it("go to the core", function()
    local core = fake.core()
    local t = lariat.now()
    lariat.sleep(0.25)
    assert.same({ 0.25 }, core.slept)
    assert.equal(t + 0.25, lariat.now())
  end)

  it("say clearly when there is no core", function()
    runtime.use_core(nil)
    assert.has_error(function() lariat.sleep(1) end,
      "lariat.sleep needs the lariat server (lariat.core is not loaded)")
    fake.core()
  end)
end)

describe("lariat.url", function()
  it("decodes strictly and encodes unreserved-safe", function()
    assert.equal("a b+c", lariat.url.decode("a%20b+c"))
    assert.equal("a b c", lariat.url.decode("a+b%20c", true))
    assert.is_nil((lariat.url.decode("%x1")))
    assert.is_nil((lariat.url.decode("100%")))
    assert.equal("a%20b%2F%C3%A9~", lariat.url.encode("a b/é~"))
  end)
end)

describe("lariat.httpdate", function()
  local httpdate = require "lariat.httpdate"
  it("formats and parses the three HTTP date forms", function()
    assert.equal("Sun, 06 Nov 1994 08:49:37 GMT", httpdate.format(784111777))
    assert.equal(784111777, httpdate.parse("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.equal(784111777, httpdate.parse("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.equal(784111777, httpdate.parse("Sun Nov  6 08:49:37 1994"))
    assert.equal(951782400, httpdate.parse("Tue, 29 Feb 2000 00:00:00 GMT"))
    assert.is_nil(httpdate.parse("yesterday"))
  end)
end)

describe("lariat.middleware", function()
  it("loads middlewares by name and names unknown ones", function()
    assert.is_function(lariat.middleware.cors)
    assert.has_error(function() return lariat.middleware.nope end)
  end)
end)
