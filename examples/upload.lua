-- A form and a multipart upload page.
--
--   scripts/run examples/upload.lua   then open http://localhost:8080/
--   curl -F title=notes -F file=@README.md localhost:8080/upload
--   curl -d 'name=Ann&color=red' localhost:8080/hello
--
-- /upload streams each part with part:read(), so a file is never held whole
-- in memory; it only counts bytes and keeps the first 64 bytes as a preview.
local lariat = require "lariat"

local app = lariat.app()

local PAGE = [[<!doctype html>
<meta charset="utf-8"><title>lariat upload</title>
<h2>urlencoded form</h2>
<form method="post" action="/hello">
  <input name="name" placeholder="name"> <input name="color" placeholder="color">
  <button>send</button>
</form>
<h2>multipart upload</h2>
<form method="post" action="/upload" enctype="multipart/form-data">
  <input name="title" placeholder="title"> <input type="file" name="file" multiple>
  <button>upload</button>
</form>
]]

local function escape(s)
  return (tostring(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                        ['"'] = "&quot;", ["'"] = "&#39;" }))
end

app:get("/", function()
  return 200, { ["content-type"] = "text/html; charset=utf-8" }, PAGE
end)

app:post("/hello", function(req)
  local form = req:form()
  if not form.name or form.name == "" then
    return lariat.http_error(422, { error = "validation failed", fields = { name = "is required" } })
  end
  return { greeting = "hello " .. form.name, color = form.color }
end)

app:post("/upload", function(req)
  local fields, files = {}, lariat.json.array()
  for part in req:multipart { max_parts = 20 } do
    if part.filename then
      -- keep only the base name: browsers may send a full client-side path
      local name = part.filename:match("([^/\\]*)$")
      local size, preview = 0, nil
      for chunk in part.read, part do
        size = size + #chunk
        preview = preview or chunk:sub(1, 64)
      end
      files[#files + 1] = { field = part.name, filename = name, size = size,
                            content_type = part.content_type, preview = preview or "" }
    elseif part.name then
      fields[part.name] = part:body(4096)
    end
  end
  if req.headers.accept and req.headers.accept:find("text/html", 1, true) then
    local rows = {}
    for _, f in ipairs(files) do
      rows[#rows + 1] = ("<li>%s (%d bytes, %s)</li>"):format(escape(f.filename), f.size,
                                                             escape(f.content_type or "?"))
    end
    return 200, { ["content-type"] = "text/html; charset=utf-8" },
      "<p>title: " .. escape(fields.title or "") .. "</p><ul>" .. table.concat(rows) .. "</ul>"
  end
  return { fields = fields, files = files }
end)

return app
