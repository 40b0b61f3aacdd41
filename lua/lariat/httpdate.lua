-- lariat.httpdate: IMF-fixdate (RFC 9110 §5.6.7) without touching the C
-- locale or the local time zone, which os.date/os.time would.
local M = {}

local days = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local months = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }
local month_index = {}
for i, m in ipairs(months) do month_index[m:lower()] = i end

-- format(epoch_seconds) → "Sun, 06 Nov 1994 08:49:37 GMT"
function M.format(t)
  local d = os.date("!*t", math.floor(t))
  return ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format(
    days[d.wday], d.day, months[d.month], d.year, d.hour, d.min, d.sec)
end

-- days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- parse(s) → epoch seconds, or nil. Accepts IMF-fixdate and, as RFC 9110
-- asks of recipients, the obsolete RFC 850 and asctime forms.
function M.parse(s)
  if type(s) ~= "string" then return nil end
  local d, mon, y, h, mi, sec = s:match("^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d then
    d, mon, y, h, mi, sec = s:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if y then y = tonumber(y); y = tostring(y < 70 and 2000 + y or 1900 + y) end
  end
  if not d then
    mon, d, h, mi, sec, y = s:match("^%a+ (%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  end
  if not d then return nil end
  local m = month_index[mon:lower()]
  if not m then return nil end
  y, d, h, mi, sec = tonumber(y), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  if d < 1 or d > 31 or h > 23 or mi > 59 or sec > 60 then return nil end
  return days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + sec
end

return M
