-- lariat.mime: content types by file extension, for lariat.static.
local M = {}

local types = {
  html = "text/html", htm = "text/html", css = "text/css", txt = "text/plain",
  md = "text/markdown", csv = "text/csv", xml = "application/xml",
  js = "text/javascript", mjs = "text/javascript", json = "application/json",
  map = "application/json", webmanifest = "application/manifest+json",
  svg = "image/svg+xml", png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg",
  gif = "image/gif", webp = "image/webp", avif = "image/avif", ico = "image/x-icon",
  bmp = "image/bmp", woff = "font/woff", woff2 = "font/woff2", ttf = "font/ttf",
  otf = "font/otf", pdf = "application/pdf", zip = "application/zip",
  gz = "application/gzip", tar = "application/x-tar", wasm = "application/wasm",
  mp3 = "audio/mpeg", ogg = "audio/ogg", wav = "audio/wav", mp4 = "video/mp4",
  webm = "video/webm", lua = "text/plain",
}
M.types = types

-- types that are text get an explicit charset so browsers don't guess
local function with_charset(t)
  if t:find("^text/") or t == "application/json" or t == "application/xml"
      or t == "application/manifest+json" then
    return t .. "; charset=utf-8"
  end
  return t
end

-- for_path(path[, extra]) → content type; extra maps extensions to types.
function M.for_path(path, extra)
  local ext = path:match("%.([^./]+)$")
  if ext then
    ext = ext:lower()
    local t = (extra and extra[ext]) or types[ext]
    if t then return with_charset(t) end
  end
  return "application/octet-stream"
end

return M
