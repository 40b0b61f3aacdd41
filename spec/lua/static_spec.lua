-- lariat.static(dir, opts): files, indexes, validators, ranges, .gz siblings,
-- and no way out of dir. Uses a temporary tree; stat/realpath come from
-- LuaFileSystem here (lariat.core provides them inside the server).
local fake = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "fake.lua")
local lariat = require "lariat"
local httpdate = require "lariat.httpdate"
local has_lfs, lfs = pcall(require, "lfs")

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local describe_fs = has_lfs and describe or pending

describe_fs("lariat.static", function()
  local base, root

  setup(function()
    base = os.tmpname()
    os.remove(base)
    assert(lfs.mkdir(base))
    root = base .. "/public"
    assert(lfs.mkdir(root))
    assert(lfs.mkdir(root .. "/sub"))
    assert(lfs.mkdir(root .. "/empty"))
    assert(lfs.mkdir(base .. "/outside"))
    write(root .. "/index.html", "<h1>home</h1>")
    write(root .. "/style.css", "body { color: red }")
    write(root .. "/app.js", "console.log('plain')")
    write(root .. "/app.js.gz", "GZIPPED-BYTES")
    write(root .. "/.secret", "hidden")
    write(root .. "/sub/index.html", "<h1>sub</h1>")
    write(root .. "/data.bin", "0123456789")
    write(base .. "/outside/secret.txt", "top secret")
    assert(lfs.link(base .. "/outside", root .. "/link_out", true))
    assert(lfs.link(base .. "/outside/secret.txt", root .. "/file_out", true))
    assert(lfs.link(root .. "/style.css", root .. "/link_in.css", true))
    lfs.touch(root .. "/style.css", 784111777, 784111777)
  end)

  teardown(function()
    for _, p in ipairs { "/public/link_out", "/public/file_out", "/public/link_in.css",
        "/public/index.html", "/public/style.css", "/public/app.js", "/public/app.js.gz",
        "/public/.secret", "/public/sub/index.html", "/public/data.bin",
        "/outside/secret.txt" } do
      os.remove(base .. p)
    end
    for _, d in ipairs { "/public/sub", "/public/empty", "/public", "/outside", "" } do
      lfs.rmdir(base .. d)
    end
  end)

  local function app_with(opts, as_middleware)
    fake.core()
    local app = lariat.app()
    if as_middleware then
      app:use(lariat.static(root, opts))
      app:all("/*", function() return 200, {}, "fallthrough" end)
    else
      app:get("/static/*", lariat.static(root, opts))
      app:post("/static/*", lariat.static(root, opts))
    end
    return lariat.load_app(app, "spec.lua")
  end

  local function get(path, headers, opts, method, as_middleware)
    local dispatch = app_with(opts, as_middleware)
    local req = fake.req { method = method or "GET", path = path, headers = headers or {} }
    return req, dispatch(req, req.method, req.path)
  end

  it("serves a file with type, validators and accept-ranges", function()
    local _, status, h, body = get("/static/style.css")
    assert.equal(200, status)
    assert.equal("body { color: red }", body)
    assert.equal("text/css; charset=utf-8", h["content-type"])
    assert.equal('"13-2ebc98a1"', h.etag)
    assert.equal("Sun, 06 Nov 1994 08:49:37 GMT", h["last-modified"])
    assert.equal("bytes", h["accept-ranges"])
  end)

  it("serves index files and redirects a directory without its slash", function()
    assert.equal("<h1>home</h1>", select(4, get("/static/")))
    assert.equal("<h1>sub</h1>", select(4, get("/static/sub/")))
    local _, status, h = get("/static/sub")
    assert.equal(301, status)
    assert.equal("/static/sub/", h.location)
    assert.equal(404, select(2, get("/static/empty/")))
    assert.equal(404, select(2, get("/static/sub/", nil, { index = false })))
  end)

  it("answers 404 for missing files and dotfiles", function()
    assert.equal(404, select(2, get("/static/missing.txt")))
    assert.equal(404, select(2, get("/static/.secret")))
    assert.equal(404, select(2, get("/static/%2esecret")))
    assert.equal(200, select(2, get("/static/.secret", nil, { dotfiles = true })))
  end)

  it("answers 304 when the validators match", function()
    local _, _, h = get("/static/style.css")
    assert.equal(304, select(2, get("/static/style.css", { ["if-none-match"] = h.etag })))
    assert.equal(304, select(2, get("/static/style.css", { ["if-none-match"] = '"x", W/' .. h.etag })))
    assert.equal(304, select(2, get("/static/style.css", { ["if-none-match"] = "*" })))
    assert.equal(200, select(2, get("/static/style.css", { ["if-none-match"] = '"other"' })))
    assert.equal(304, select(2, get("/static/style.css", { ["if-modified-since"] = h["last-modified"] })))
    assert.equal(200, select(2, get("/static/style.css",
      { ["if-modified-since"] = httpdate.format(784111777 - 10) })))
    -- if-none-match takes precedence over if-modified-since
    assert.equal(200, select(2, get("/static/style.css",
      { ["if-none-match"] = '"other"', ["if-modified-since"] = h["last-modified"] })))
  end)

  it("serves a single range with 206", function()
    local cases = { ["bytes=0-3"] = { "0123", "bytes 0-3/10" }, ["bytes=7-"] = { "789", "bytes 7-9/10" },
                    ["bytes=-2"] = { "89", "bytes 8-9/10" }, ["bytes=5-100"] = { "56789", "bytes 5-9/10" } }
    for range, want in pairs(cases) do
      local _, status, h, body = get("/static/data.bin", { range = range })
      assert.equal(206, status, range)
      assert.same(want, { body, h["content-range"] }, range)
    end
  end)

  it("answers 416 for unsatisfiable ranges and ignores others", function()
    local _, status, h = get("/static/data.bin", { range = "bytes=10-" })
    assert.equal(416, status)
    assert.equal("bytes */10", h["content-range"])
    assert.equal(200, select(2, get("/static/data.bin", { range = "bytes=0-1,4-5" })))
    assert.equal(200, select(2, get("/static/data.bin", { range = "bytes=5-2" })))
    assert.equal(200, select(2, get("/static/data.bin", { range = "lines=1-2" })))
    assert.equal(200, select(2, get("/static/data.bin", { range = "bytes=0-1", ["if-range"] = '"stale"' })))
  end)

  it("answers HEAD like GET (the core drops the body)", function()
    local _, status, h = get("/static/style.css", nil, nil, "HEAD")
    assert.equal(200, status)
    assert.equal("text/css; charset=utf-8", h["content-type"])
  end)

  it("serves a .gz sibling to clients accepting gzip", function()
    local _, status, h, body = get("/static/app.js", { ["accept-encoding"] = "gzip, br" })
    assert.equal(200, status)
    assert.same({ "GZIPPED-BYTES", "gzip", "text/javascript; charset=utf-8", "accept-encoding" },
      { body, h["content-encoding"], h["content-type"], h.vary })
    _, status, h, body = get("/static/app.js")
    assert.same({ "console.log('plain')", nil, "accept-encoding" }, { body, h["content-encoding"], h.vary })
    _, status, h, body = get("/static/app.js", { ["accept-encoding"] = "gzip", range = "bytes=0-6" })
    assert.same({ 206, "console", nil }, { status, body, h["content-encoding"] })
    _, status, h, body = get("/static/app.js", { ["accept-encoding"] = "gzip" }, { precompressed = false })
    assert.equal("console.log('plain')", body)
  end)

  it("never leaves the directory: .., encoded dots, NUL, symlinks out", function()
    local handler = (function() fake.core(); return lariat.static(root) end)()
    local function direct(path_info)
      local req = fake.req { path = "/x" }
      req.path_info = path_info
      return handler(req)
    end
    assert.equal(404, direct("../outside/secret.txt"))
    assert.equal(404, direct("sub/../../outside/secret.txt"))
    assert.equal(404, direct("style.css\0.png"))
    assert.equal(404, direct("sub\\..\\..\\outside"))
    assert.equal(200, direct("sub/index.html"))
    -- through the router: dot segments are resolved before routing
    assert.equal(404, select(2, get("/static/%2e%2e/outside/secret.txt")))
    assert.equal(400, select(2, get("/static/style.css%00")))
    -- symlinks leading out of the tree serve nothing; inside the tree they work
    assert.equal(404, select(2, get("/static/link_out/secret.txt")))
    assert.equal(404, select(2, get("/static/file_out")))
    assert.equal("body { color: red }", select(4, get("/static/link_in.css")))
  end)

  it("answers 405 to other methods as a handler and falls through as a middleware", function()
    local _, status, h = get("/static/style.css", nil, nil, "POST")
    assert.equal(405, status)
    assert.equal("GET, HEAD", h.allow)
    assert.equal("fallthrough", select(4, get("/style.css", nil, nil, "POST", true)))
    assert.equal("fallthrough", select(4, get("/nothing-here", nil, nil, "GET", true)))
    assert.equal("body { color: red }", select(4, get("/style.css", nil, nil, "GET", true)))
    assert.equal("fallthrough", select(4, get("/../outside/secret.txt", nil, nil, "GET", true)))
  end)

  it("streams files larger than max_buffer", function()
    local req, status = get("/static/data.bin", nil, { max_buffer = 4 })
    assert.is_nil(status)
    assert.equal(200, req.replied.status)
    assert.equal("0123456789", table.concat(req.written))
  end)

  it("refuses a root that is not a directory", function()
    fake.core()
    assert.has_error(function() lariat.static(root .. "/style.css") end)
    assert.has_error(function() lariat.static(base .. "/nope") end)
  end)
end)
