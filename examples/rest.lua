-- A JSON REST API: CRUD over an in-memory store of todos.
--
--   scripts/run examples/rest.lua
--   curl -s localhost:8080/todos -d '{"title":"write docs"}' -H 'content-type: application/json'
--   curl -s localhost:8080/todos
--   curl -s -X PATCH localhost:8080/todos/1 -d '{"done":true}'
--   curl -s -X DELETE localhost:8080/todos/1
--
-- Invalid input answers 422 with a JSON body naming each bad field;
-- malformed JSON answers 400 (req:json()); unknown ids 404 JSON.
-- The store lives in the worker's Lua state: each worker has its own.
local lariat = require "lariat"
local json = lariat.json

local app = lariat.app()
app:use(lariat.middleware.request_id())

local todos, next_id = {}, 1

local function not_found(id)
  return lariat.http_error(404, { error = "no todo with id " .. tostring(id) })
end

-- check a todo document; `partial` (PATCH) allows missing fields
local function validate(doc, partial)
  if type(doc) ~= "table" or doc[1] ~= nil then
    return { _ = "expected a JSON object" }
  end
  local errors = {}
  if doc.title ~= nil or not partial then
    if type(doc.title) ~= "string" or doc.title:match("^%s*$") then
      errors.title = "is required and must be a non-empty string"
    elseif #doc.title > 200 then
      errors.title = "must be at most 200 characters"
    end
  end
  if doc.done ~= nil and type(doc.done) ~= "boolean" then
    errors.done = "must be true or false"
  end
  for k in pairs(doc) do
    if k ~= "title" and k ~= "done" then errors[k] = "is not a known field" end
  end
  if next(errors) then return errors end
  return nil
end

local function invalid(errors)
  return lariat.http_error(422, { error = "validation failed", fields = errors })
end

local ID = { constraints = { id = "int" } }

app:get("/todos", function(req)
  local list = json.array()
  for _, t in pairs(todos) do list[#list + 1] = t end
  table.sort(list, function(a, b) return a.id < b.id end)
  local q = req:query()
  if q.done then
    local want = q.done == "true"
    local filtered = json.array()
    for _, t in ipairs(list) do if t.done == want then filtered[#filtered + 1] = t end end
    list = filtered
  end
  return { todos = list, count = #list }
end)

app:post("/todos", function(req)
  local doc = req:json()
  local errors = validate(doc, false)
  if errors then return invalid(errors) end
  local todo = { id = next_id, title = doc.title, done = doc.done or false }
  todos[todo.id], next_id = todo, next_id + 1
  return 201, { ["content-type"] = "application/json", location = "/todos/" .. todo.id },
         json.encode(todo)
end)

app:get("/todos/:id", ID, function(req)
  return todos[req.bindings.id] or not_found(req.bindings.id)
end)

-- PUT replaces, PATCH updates the fields given
local function update(partial)
  return function(req)
    local id = req.bindings.id
    local todo = todos[id]
    if not todo then return not_found(id) end
    local doc = req:json()
    local errors = validate(doc, partial)
    if errors then return invalid(errors) end
    if partial then
      if doc.title ~= nil then todo.title = doc.title end
      if doc.done ~= nil then todo.done = doc.done end
    else
      todo.title, todo.done = doc.title, doc.done or false
    end
    return todo
  end
end
app:put("/todos/:id", ID, update(false))
app:patch("/todos/:id", ID, update(true))

app:delete("/todos/:id", ID, function(req)
  local id = req.bindings.id
  if not todos[id] then return not_found(id) end
  todos[id] = nil
  return 204
end)

return app
