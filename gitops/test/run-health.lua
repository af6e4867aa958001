-- Runs an Argo CD resource health check against one object, the way Argo CD does.
--
--   lua5.4 run-health.lua HEALTH.lua OBJECT.json   (OBJECT.json may be "-" for stdin)
--
-- Prints "STATUS<TAB>MESSAGE" on one line (newlines, tabs and backslashes in the message
-- are written as \n, \t and \\) and exits 0. Exits 2 when the script fails to load or
-- raises an error, 3 when it returns something Argo CD would reject, 64 on bad usage.
--
-- What is emulated, and why it matters:
--  * Argo CD runs custom checks in gopher-lua (Lua 5.1) with only the base and table
--    libraries and a reduced os library. The check runs here in an environment with just
--    those, and with the string metatable removed, so `s:find(...)` or `string.format`
--    fail here as they would in Argo CD instead of passing this test and failing there.
--  * Argo CD converts the object from Go values: JSON null becomes nil, and gopher-lua's
--    single number type prints 7 as "7". cjson gives cjson.null (a lightuserdata) and,
--    under Lua 5.4, floats that print as "7.0"; both are normalised before the run.
--  * Argo CD gives a check one second; a runaway loop fails here too.
--  * Argo CD accepts only a table whose status is one of its health codes and whose
--    message is a string; anything else is reported as an error here.

local cjson = require("cjson")

local function die(code, text)
  io.stderr:write("run-health.lua: ", text, "\n")
  os.exit(code)
end

local health_path, object_path = arg[1], arg[2]
if health_path == nil or object_path == nil or arg[3] ~= nil then
  die(64, "usage: lua5.4 run-health.lua HEALTH.lua OBJECT.json|-")
end

local function read_all(path)
  local f, err
  if path == "-" then
    f = io.stdin
  else
    f, err = io.open(path, "rb")
    if f == nil then
      die(64, "cannot read " .. path .. ": " .. tostring(err))
    end
  end
  local data = f:read("a")
  if f ~= io.stdin then
    f:close()
  end
  return data
end

local source = read_all(health_path)
local ok, decoded = pcall(cjson.decode, read_all(object_path))
if not ok then
  die(64, "invalid JSON in " .. object_path .. ": " .. tostring(decoded))
end
if type(decoded) ~= "table" or decoded.kind == nil then
  die(64, object_path .. " is not a Kubernetes object (no kind)")
end
if type(decoded.kind) == "string" and decoded.kind:match("List$") then
  die(64, object_path .. " is a " .. decoded.kind .. ": pass one object (kubectl get KIND NAME -o json)")
end

-- A decoded JSON list has keys 1..n only; anything else is an object.
local function is_list(t)
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then
      return false
    end
    n = n + 1
  end
  return n > 0
end

-- JSON null -> absent (dropped from lists, as gopher-lua's table append drops nil);
-- integral floats -> integers, so they print like gopher-lua numbers.
local function normalise(v)
  if v == cjson.null then
    return nil
  end
  if type(v) == "number" then
    return math.tointeger(v) or v
  end
  if type(v) ~= "table" then
    return v
  end
  local out = {}
  if is_list(v) then
    local max = 0
    for k in pairs(v) do
      if k > max then
        max = k
      end
    end
    for i = 1, max do
      local item = normalise(v[i])
      if item ~= nil then
        out[#out + 1] = item
      end
    end
  else
    for k, item in pairs(v) do
      out[k] = normalise(item)
    end
  end
  return out
end

local object = normalise(decoded)

-- Argo CD's libraries: base, table and its "safe" os (time, date, clock).
local env = {
  obj = object,
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, select = select, tonumber = tonumber, tostring = tostring,
  type = type, unpack = table.unpack, xpcall = xpcall, rawequal = rawequal,
  rawget = rawget, rawset = rawset, getmetatable = getmetatable,
  setmetatable = setmetatable,
  table = { insert = table.insert, remove = table.remove, concat = table.concat, sort = table.sort },
  os = { time = os.time, date = os.date, clock = os.clock },
}
env._G = env

local chunk, load_err = load(source, "@" .. health_path, "t", env)
if chunk == nil then
  die(2, "health check does not load: " .. tostring(load_err))
end

local string_mt = debug.getmetatable("")
local started = os.clock()
debug.setmetatable("", nil)
debug.sethook(function()
  if os.clock() - started > 1 then
    error("health check ran over Argo CD's 1 s limit")
  end
end, "", 100000)
local ran, hs = pcall(chunk)
debug.sethook()
debug.setmetatable("", string_mt)

if not ran then
  die(2, "health check raised an error: " .. tostring(hs))
end
if type(hs) ~= "table" then
  die(3, "health check returned a " .. type(hs) .. ", Argo CD expects a table")
end
local valid = { Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true }
if type(hs.status) ~= "string" or not valid[hs.status] then
  die(3, "health check returned status " .. tostring(hs.status) .. ", which Argo CD rejects")
end
if hs.message ~= nil and type(hs.message) ~= "string" then
  die(3, "health check returned a " .. type(hs.message) .. " message, Argo CD expects a string")
end

local message = (hs.message or ""):gsub("[\\\n\t\r]", { ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r" })
io.write(hs.status, "\t", message, "\n")
