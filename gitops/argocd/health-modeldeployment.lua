-- Argo CD health check for taimatsu.dev/v1alpha1 ModelDeployment.
--
-- Installed as resource.customizations.health.taimatsu.dev_ModelDeployment in argocd-cm
-- (argocd-cm-patch.yaml embeds this file byte for byte; gitops/test/argocd-health.sh
-- fails when the two differ). Argo CD binds the live object to `obj` and shows the
-- returned table's status and message on the resource and, rolled up, on the Application.
--
-- Precedence: a status older than the spec (Progressing), RolledBack (Degraded), Degraded,
-- Progressing, Ready (Healthy), anything else (Progressing). docs/gitops.md has the table.
--
-- Argo CD runs custom health checks in gopher-lua (Lua 5.1) with only the base and table
-- libraries and a reduced os library: there is no string.* or math.*, so this script uses
-- neither. Every field is read defensively: a script that raises an error leaves the
-- resource without a health status, which hides exactly the failures it exists to show.

local hs = { status = "Progressing", message = "" }

-- `v` if it is a table (a JSON object or list), nil for anything else: absent, JSON null,
-- or a scalar where an object belongs.
local function tbl(v)
  if type(v) == "table" then
    return v
  end
  return nil
end

-- `v` as text if it is a scalar, nil otherwise.
local function str(v)
  if type(v) == "string" then
    return v
  end
  if type(v) == "number" or type(v) == "boolean" then
    return tostring(v)
  end
  return nil
end

-- `v` as a number. Argo CD passes integers as numbers, but values decoded as json.Number
-- arrive as strings, so numeric strings count too.
local function num(v)
  if type(v) == "number" then
    if v == v then -- not NaN
      return v
    end
    return nil
  end
  if type(v) == "string" then
    return tonumber(v)
  end
  return nil
end

local function nonempty(s)
  return s ~= nil and s ~= ""
end

-- Whether `s` begins with `prefix`, without string.sub (not available): strings compare
-- bytewise, and every string that begins with `prefix` sorts from `prefix` up to, not
-- including, `prefix` followed by byte 255, which never occurs in UTF-8 text.
local function starts_with(s, prefix)
  return prefix <= s and s < prefix .. "\255"
end

-- "Reason: message", or whichever of the two is set, or `fallback`. Messages copied from
-- the fetch step already begin with their reason ("FetchFailed: ..."); it is not repeated.
local function describe(cond, fallback)
  if cond == nil then
    return fallback
  end
  local reason = str(cond.reason)
  local message = str(cond.message)
  if nonempty(reason) and nonempty(message) then
    if starts_with(message, reason) then
      return message
    end
    return reason .. ": " .. message
  end
  if nonempty(message) then
    return message
  end
  if nonempty(reason) then
    return reason
  end
  return fallback
end

local object = tbl(obj) or {}
local metadata = tbl(object.metadata) or {}
local status = tbl(object.status)
local generation = num(metadata.generation)
local observed = nil
if status ~= nil then
  observed = num(status.observedGeneration)
end

-- Conditions by type; the first entry of a type wins. A `conditions` that is not a list
-- (or entries that are not objects) is ignored rather than trusted.
local conditions = {}
if status ~= nil and tbl(status.conditions) ~= nil then
  for _, entry in ipairs(status.conditions) do
    local cond = tbl(entry)
    local ctype = cond and str(cond.type)
    if ctype ~= nil and conditions[ctype] == nil then
      conditions[ctype] = cond
    end
  end
end

local function is_true(ctype)
  local cond = conditions[ctype]
  return cond ~= nil and cond.status == "True"
end

local ready_message = nil
if conditions.Ready ~= nil then
  ready_message = str(conditions.Ready.message)
end

if status == nil or observed == nil or (generation ~= nil and observed < generation) then
  -- Conditions written for an older spec say nothing about the current one: after a
  -- sync Argo CD would otherwise report the previous revision's health as this one's.
  local wanted = "(unknown)"
  if generation ~= nil then
    wanted = tostring(generation)
  end
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. wanted
elseif is_true("RolledBack") then
  -- Checked before Degraded: the operator sets both, and this message also says what is
  -- serving now. Still Degraded: Git asks for a revision that is not being served.
  local cond = conditions.RolledBack
  local detail = str(cond.message)
  if nonempty(detail) and starts_with(detail, "desired revision ") then
    -- The operator's own message already reads "desired revision 7 failed (...): serving
    -- revision 6"; repeating it would only add noise.
    hs.message = detail
  else
    local failed = num(status.failedRevision) or num(status.desiredRevision)
    local serving = num(status.servingRevision)
    local text = "desired revision "
    if failed ~= nil then
      text = text .. tostring(failed)
    else
      text = text .. "(unknown)"
    end
    text = text .. " failed"
    local reason = str(cond.reason)
    if nonempty(reason) then
      text = text .. " (" .. reason .. ")"
    end
    text = text .. ": serving revision "
    if serving ~= nil then
      text = text .. tostring(serving)
    else
      text = text .. "(unknown)"
    end
    if nonempty(detail) then
      text = text .. "; " .. detail
    end
    hs.message = text
  end
  hs.status = "Degraded"
elseif is_true("Degraded") then
  hs.status = "Degraded"
  hs.message = describe(conditions.Degraded, "Degraded")
elseif is_true("Progressing") then
  -- Before Ready: while a new revision rolls out, the last stable one may still serve and
  -- keep Ready true. For Argo CD the sync is done only when the revision Git asks for is.
  local text = describe(conditions.Progressing, "rollout in progress")
  if nonempty(ready_message) then
    text = text .. " (" .. ready_message .. ")"
  end
  hs.status = "Progressing"
  hs.message = text
elseif is_true("Ready") then
  hs.status = "Healthy"
  if nonempty(ready_message) then
    hs.message = ready_message
  else
    hs.message = "Ready"
  end
else
  hs.status = "Progressing"
  if nonempty(ready_message) then
    hs.message = ready_message
  else
    hs.message = "waiting for the operator to report Ready"
  end
end

return hs
