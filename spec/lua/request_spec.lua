-- Request helpers installed on req: query, cookies, set_cookie, form, json,
-- redirect, sse.
local fake = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "fake.lua")
local lariat = require "lariat"

local function req(t)
  fake.core()
  return fake.req(t)
end

local function http_error_of(fn)
  local ok, e = pcall(fn)
  assert.is_false(ok, "expected an error")
  assert.is_table(e, "expected an http_error, got " .. tostring(e))
  return e.status, e.body
end

describe("req:query()", function()
  it("decodes pairs, + as space, repeated keys into arrays", function()
    local q = req { qs = "a=1&b=x+y%21&a=2&flag&&a=3&empty=" }:query()
    assert.same({ a = { "1", "2", "3" }, b = "x y!", flag = "", empty = "" }, q)
  end)

  it("is empty without a query string", function()
    assert.same({}, req { qs = "" }:query())
  end)

  it("answers 400 over the parameter limit instead of dropping", function()
    local parts = {}
    for i = 1, 1001 do parts[i] = "k" .. i .. "=v" end
    local status, body = http_error_of(function() req { qs = table.concat(parts, "&") }:query() end)
    assert.equal(400, status)
    assert.matches("too many query parameters %(limit 1000%)", body)
    parts[1001] = nil
    local q = req { qs = table.concat(parts, "&") }:query()
    assert.equal("v", q.k1000)
  end)

  it("follows lariat.limits.query_params", function()
    local old = lariat.limits.query_params
    lariat.limits.query_params = 2
    local ok = pcall(function() req { qs = "a&b&c" }:query() end)
    lariat.limits.query_params = old
    assert.is_false(ok)
  end)

  it("answers 400 on malformed percent-encoding", function()
    assert.equal(400, (http_error_of(function() req { qs = "a=%G1" }:query() end)))
  end)
end)

describe("req:cookies() and req:set_cookie()", function()
  it("parses the cookie header; first occurrence wins; quotes removed", function()
    local c = req { headers = { cookie = 'sid=abc; theme="dark"; sid=other;  lang = fr' } }:cookies()
    assert.same({ sid = "abc", theme = "dark", lang = "fr" }, c)
    assert.same({}, req {}:cookies())
  end)

  it("accepts repeated cookie fields (HTTP/2)", function()
    local c = req { headers = { cookie = { "a=1", "b=2" } } }:cookies()
    assert.same({ a = "1", b = "2" }, c)
  end)

  it("serialises every attribute and appends one set-cookie per call", function()
    local r = req {}
    r:set_cookie("sid", "abc", { path = "/", domain = "example.com", max_age = 3600,
      expires = 784111777, secure = true, http_only = true, same_site = "lax" })
    r:set_cookie("theme", "dark")
    assert.same({
      "sid=abc; Path=/; Domain=example.com; Max-Age=3600; Expires=Sun, 06 Nov 1994 08:49:37 GMT; Secure; HttpOnly; SameSite=Lax",
      "theme=dark",
    }, r.set_headers["set-cookie"])
  end)

  it("refuses names and values that would corrupt the header", function()
    local r = req {}
    assert.has_error(function() r:set_cookie("bad name", "v") end)
    assert.has_error(function() r:set_cookie("n", "a;b") end)
    assert.has_error(function() r:set_cookie("n", "v", { path = "/\r\nx: y" }) end)
    assert.has_error(function() r:set_cookie("n", "v", { same_site = "sometimes" }) end)
    assert.is_nil(r.set_headers["set-cookie"])
  end)
end)

describe("req:form()", function()
  local URLENC = { ["content-type"] = "application/x-www-form-urlencoded; charset=UTF-8" }

  it("parses an urlencoded body", function()
    local f = req { method = "POST", headers = URLENC, body = "name=J%C3%B6rg+M&tag=a&tag=b" }:form()
    assert.same({ name = "Jörg M", tag = { "a", "b" } }, f)
  end)

  it("answers 400 over the field limit", function()
    local old = lariat.limits.form_params
    lariat.limits.form_params = 3
    local status = http_error_of(function()
      req { method = "POST", headers = URLENC, body = "a=1&b=2&c=3&d=4" }:form()
    end)
    lariat.limits.form_params = old
    assert.equal(400, status)
  end)

  it("answers 415 for other media types", function()
    assert.equal(415, (http_error_of(function()
      req { method = "POST", headers = { ["content-type"] = "text/plain" }, body = "a=1" }:form()
    end)))
  end)

  it("collects multipart fields, with files as tables", function()
    local body = table.concat({
      "--XyZ", 'Content-Disposition: form-data; name="title"', "", "Holiday",
      "--XyZ", 'Content-Disposition: form-data; name="photo"; filename="a.png"',
      "Content-Type: image/png", "", "\137PNG data",
      "--XyZ--", "" }, "\r\n")
    local f = req { method = "POST", headers = { ["content-type"] = "multipart/form-data; boundary=XyZ" },
                    body = body }:form()
    assert.equal("Holiday", f.title)
    assert.equal("a.png", f.photo.filename)
    assert.equal("image/png", f.photo.content_type)
    assert.equal("\137PNG data", f.photo.body)
  end)
end)

describe("req:json()", function()
  it("decodes the body", function()
    assert.same({ a = { 1, 2 } }, req { body = '{"a":[1,2]}' }:json())
  end)

  it("answers 400 with the parser's message on malformed JSON, as JSON", function()
    local status, body = http_error_of(function() req { body = '{"a":' }:json() end)
    assert.equal(400, status)
    local v = require("lariat.json").decode(body)
    assert.equal(400, v.status)
    assert.matches("^malformed JSON: ", v.error)
    assert.equal(400, (http_error_of(function() req { body = "" }:json() end)))
  end)

  it("answers 408 when the body timed out", function()
    assert.equal(408, (http_error_of(function() req { body_error = "timeout" }:json() end)))
  end)
end)

describe("req:redirect()", function()
  it("replies with location, 302 by default", function()
    local r = req {}
    r:redirect("/login")
    assert.equal(302, r.replied.status)
    assert.equal("/login", r.replied.headers.location)
    local r2 = req {}
    r2:redirect("https://example.com/", 308)
    assert.equal(308, r2.replied.status)
  end)

  it("refuses non-3xx statuses and header injection", function()
    assert.has_error(function() req {}:redirect("/x", 200) end)
    assert.has_error(function() req {}:redirect("/x\r\nset-cookie: a=b") end)
  end)
end)

describe("req:sse()", function()
  it("starts an event stream and formats events", function()
    local r = req {}
    local events = r:sse()
    assert.equal(200, r.replied.status)
    assert.equal("text/event-stream; charset=utf-8", r.replied.headers["content-type"])
    assert.equal("no-cache", r.replied.headers["cache-control"])
    assert.is_true(events:send { event = "tick", id = 7, data = "one\ntwo\r\nthree" })
    events:send("plain")
    events:send { data = { n = 1 } }
    events:send { retry = 5000 }
    events:comment("hi")
    assert.same({
      "event: tick\nid: 7\ndata: one\ndata: two\ndata: three\n\n",
      "data: plain\n\n",
      'data: {"n":1}\n\n',
      "retry: 5000\n\n",
      ": hi\n\n",
    }, r.written)
  end)

  it("refuses newlines in event and id", function()
    local events = req {}:sse()
    assert.has_error(function() events:send { event = "a\nb", data = "x" } end)
    assert.has_error(function() events:send { id = "1\r", data = "x" } end)
  end)

  it("wait() sleeps, sending a keep-alive comment every interval", function()
    local core = fake.core()
    local r = fake.req {}
    local events = r:sse { keepalive = 2 }
    assert.is_true(events:wait(5))
    assert.same({ 2, 2, 1 }, core.slept)
    assert.same({ ": keep-alive\n\n", ": keep-alive\n\n" }, r.written)
  end)

  it("wait() reports a closed client", function()
    fake.core()
    local r = fake.req {}
    local events = r:sse { keepalive = 1 }
    r.closed = true
    assert.same({ nil, "closed" }, { events:wait(3) })
  end)
end)
