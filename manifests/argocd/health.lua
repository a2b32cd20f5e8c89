-- Argo CD health check for Kubeflow MPIJob (kubeflow.org/v2beta1) and PyTorchJob
-- (kubeflow.org/v1). Both operators report the same conditions: Created, Running,
-- Restarting, Succeeded, Failed, Suspended. The newest condition that is True decides:
--   Failed -> Degraded, Succeeded -> Healthy, Suspended -> Suspended,
--   Created/Running/Restarting or no status yet -> Progressing.
-- Running is Progressing, not Healthy, as for a batch Job: a sync "finishes" only when
-- training has succeeded. Install: see README.md in this folder.
local hs = {}

local function replica_summary(status)
  -- "Launcher: 1 active; Worker: 2 active" from status.replicaStatuses, in a fixed order.
  if status.replicaStatuses == nil then
    return nil
  end
  local parts = {}
  for _, role in ipairs({"Launcher", "Master", "Worker"}) do
    local r = status.replicaStatuses[role]
    if r ~= nil then
      local counts = {}
      for _, key in ipairs({"active", "succeeded", "failed"}) do
        if r[key] ~= nil and r[key] > 0 then
          table.insert(counts, r[key] .. " " .. key)
        end
      end
      if #counts > 0 then
        table.insert(parts, role .. ": " .. table.concat(counts, ", "))
      end
    end
  end
  if #parts == 0 then
    return nil
  end
  return table.concat(parts, "; ")
end

local function describe(condition, fallback)
  local text = condition.message
  if text == nil or text == "" then
    text = condition.reason
  end
  if text == nil or text == "" then
    text = fallback
  end
  return text
end

if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
  if obj.spec ~= nil and obj.spec.runPolicy ~= nil and obj.spec.runPolicy.suspend == true then
    hs.status = "Suspended"
    hs.message = "The job is suspended (runPolicy.suspend)"
    return hs
  end
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to create the job's pods"
  return hs
end

-- The newest True condition, by lastTransitionTime (RFC 3339 strings sort in time
-- order); on ties the later one in the list wins.
local current = nil
for _, c in ipairs(obj.status.conditions) do
  if c.status == "True" then
    if current == nil or (c.lastTransitionTime or "") >= (current.lastTransitionTime or "") then
      current = c
    end
  end
end

-- A terminal condition wins over any later bookkeeping condition.
for _, c in ipairs(obj.status.conditions) do
  if c.status == "True" and (c.type == "Failed" or c.type == "Succeeded") then
    current = c
  end
end

local replicas = replica_summary(obj.status)
local function with_replicas(text)
  if replicas ~= nil then
    return text .. " (" .. replicas .. ")"
  end
  return text
end

if current == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the job to start"
elseif current.type == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(current, "The job failed")
elseif current.type == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(current, "The job succeeded")
elseif current.type == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(current, "The job is suspended")
elseif current.type == "Restarting" then
  hs.status = "Progressing"
  hs.message = with_replicas("Restarting: " .. describe(current, "a replica failed and is restarting"))
elseif current.type == "Running" then
  hs.status = "Progressing"
  hs.message = with_replicas(describe(current, "The job is running"))
else
  hs.status = "Progressing"
  hs.message = with_replicas(describe(current, "The job was created"))
end
return hs
