-- req:multipart(): streaming multipart/form-data (RFC 7578).
local fake = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "fake.lua")
require "lariat"

local CT = { ["content-type"] = 'multipart/form-data; boundary="----b0undary"' }

local BODY = table.concat({
  "preamble to ignore",
  "------b0undary",
  'Content-Disposition: form-data; name="field"',
  "",
  "value with\r\nCRLF inside and --dashes",
  "------b0undary  ", -- transport padding after the delimiter is allowed
  'Content-Disposition: form-data; name="file"; filename="C:\\\\dir\\\\a \\"q\\".txt"',
  "Content-Type: text/plain",
  "",
  string.rep("0123456789", 500),
  "------b0undary",
  "content-disposition: form-data; name=\"euro\"; filename*=UTF-8''%E2%82%AC.txt",
  "",
  "",
  "------b0undary--",
  "epilogue",
}, "\r\n")

-- split s into chunks of n bytes, as read_body would deliver them
local function chunked(s, n)
  local out = {}
  for i = 1, #s, n do out[#out + 1] = s:sub(i, i + n - 1) end
  return out
end

local function collect(r, opts)
  local parts = {}
  for part in r:multipart(opts) do
    parts[#parts + 1] = { name = part.name, filename = part.filename, headers = part.headers,
                          body = part:body() }
  end
  return parts
end

local function status_of(fn)
  local ok, e = pcall(fn)
  assert.is_false(ok)
  assert.is_table(e, tostring(e))
  return e.status, e.body
end

describe("req:multipart()", function()
  it("yields parts with headers, name, filename and body", function()
    fake.core()
    local parts = collect(fake.req { headers = CT, body = BODY })
    assert.equal(3, #parts)
    assert.same({ "field", nil, "value with\r\nCRLF inside and --dashes" },
      { parts[1].name, parts[1].filename, parts[1].body })
    assert.equal('C:\\dir\\a "q".txt', parts[2].filename)
    assert.equal("text/plain", parts[2].headers["content-type"])
    assert.equal(string.rep("0123456789", 500), parts[2].body)
    assert.same({ "euro", "€.txt", "" }, { parts[3].name, parts[3].filename, parts[3].body })
  end)

  it("gives the same parts whatever the chunking of the body", function()
    fake.core()
    local expected = collect(fake.req { headers = CT, body = BODY })
    for _, n in ipairs { 1, 2, 3, 7, 16, 63, 1000 } do
      assert.same(expected, collect(fake.req { headers = CT, chunks = chunked(BODY, n) }), "chunk size " .. n)
    end
  end)

  it("streams a part's body in chunks without buffering it whole", function()
    fake.core()
    local r = fake.req { headers = CT, chunks = chunked(BODY, 512) }
    local it = r:multipart()
    it() -- field
    local file = it()
    local sizes, total = {}, 0
    for chunk in file.read, file do sizes[#sizes + 1] = #chunk; total = total + #chunk end
    assert.equal(5000, total)
    assert.is_true(#sizes > 5)
    for _, n in ipairs(sizes) do assert.is_true(n <= 512) end
  end)

  it("skips the unread rest of a part when advancing", function()
    fake.core()
    local it = fake.req { headers = CT, chunks = chunked(BODY, 100) }:multipart()
    assert.equal("field", it().name)
    local file = it()
    assert.equal(#file:read() > 0, true) -- read only a little
    local euro = it()
    assert.equal("euro", euro.name)
    assert.is_nil(it())
    assert.is_nil(it())
  end)

  it("answers 413 over the part count limit", function()
    fake.core()
    local status, body = status_of(function() collect(fake.req { headers = CT, body = BODY }, { max_parts = 2 }) end)
    assert.equal(413, status)
    assert.matches("too many multipart parts", body)
  end)

  it("answers 413 over the total size limit", function()
    fake.core()
    local status = status_of(function()
      collect(fake.req { headers = CT, chunks = chunked(BODY, 256) }, { max_size = 1024 })
    end)
    assert.equal(413, status)
  end)

  it("answers 413 when a part's headers are too large", function()
    fake.core()
    local body = "--b\r\nX-Big: " .. string.rep("a", 10000) .. "\r\n\r\nx\r\n--b--\r\n"
    local status = status_of(function()
      collect(fake.req { headers = { ["content-type"] = "multipart/form-data; boundary=b" },
                         chunks = chunked(body, 300) })
    end)
    assert.equal(413, status)
  end)

  it("answers 400 on a truncated body or a body without the boundary", function()
    fake.core()
    local ct = { ["content-type"] = "multipart/form-data; boundary=b" }
    assert.equal(400, (status_of(function()
      collect(fake.req { headers = ct, body = '--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nunfinished' })
    end)))
    assert.equal(400, (status_of(function() collect(fake.req { headers = ct, body = "no boundary here" }) end)))
    assert.equal(400, (status_of(function()
      collect(fake.req { headers = ct, body = "--b\r\nbad header line\r\n\r\nx\r\n--b--" })
    end)))
  end)

  it("answers 415 / 400 for a wrong content type or a missing boundary", function()
    fake.core()
    assert.equal(415, (status_of(function() fake.req { headers = { ["content-type"] = "text/plain" } }:multipart() end)))
    assert.equal(400, (status_of(function()
      fake.req { headers = { ["content-type"] = "multipart/form-data" } }:multipart()
    end)))
  end)

  it("answers 408 when reading the body times out", function()
    fake.core()
    assert.equal(408, (status_of(function()
      collect(fake.req { headers = CT, body_error = "timeout" })
    end)))
  end)
end)
