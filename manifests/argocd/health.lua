-- Argo CD health check for Kubeflow MPIJob (kubeflow.org/v2beta1), PyTorchJob
-- (kubeflow.org/v1) and TrainJob (trainer.kubeflow.org/v1alpha1). The first two operators
-- report the same conditions: Created, Running, Restarting, Succeeded, Failed, Suspended.
-- The newest condition that is True decides:
--   Failed -> Degraded, Succeeded -> Healthy, Suspended -> Suspended,
--   Created/Running/Restarting or no status yet -> Progressing.
-- Running is Progressing, not Healthy, as for a batch Job: a sync "finishes" only when
-- training has succeeded. Install: see README.md in this folder.
--
-- TrainJob (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer v2) has other conditions:
-- only Suspended, Complete and Failed (pkg/apis/trainer/v1alpha1/trainjob_types.go), and
-- no Running one; its progress is status.jobsStatus, one entry per replicated job of its
-- JobSet with counts of child Jobs (active, ready, succeeded, failed, suspended):
--   Failed -> Degraded, Complete -> Healthy, Suspended (or spec.suspend before the
--   controller says so) -> Suspended, else Progressing with the jobsStatus counts.
local hs = {}

local function trainjob_jobs(status)
  -- " (node: 2 active, 2 ready; launcher: 1 active)" from status.jobsStatus, in its order
  -- ("" when every count is 0; nil before the JobSet exists), and whether a Job is active.
  if status == nil or status.jobsStatus == nil or #status.jobsStatus == 0 then
    return nil, false
  end
  local parts = {}
  local active = false
  for _, j in ipairs(status.jobsStatus) do
    local counts = {}
    for _, key in ipairs({"active", "ready", "succeeded", "failed", "suspended"}) do
      if j[key] ~= nil and j[key] > 0 then
        table.insert(counts, j[key] .. " " .. key)
      end
    end
    if j.active ~= nil and j.active > 0 then
      active = true
    end
    if #counts > 0 then
      table.insert(parts, (j.name or "?") .. ": " .. table.concat(counts, ", "))
    end
  end
  if #parts == 0 then
    return "", active
  end
  return " (" .. table.concat(parts, "; ") .. ")", active
end

local function trainjob_condition(status, wanted)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == wanted and c.status == "True" then
      return c
    end
  end
  return nil
end

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

local function condition_text(condition, fallback)
  local text = condition.message
  if text == nil or text == "" then
    text = condition.reason
  end
  if text == nil or text == "" then
    text = fallback
  end
  return text
end

if obj.kind == "TrainJob" then
  local failed = trainjob_condition(obj.status, "Failed")
  local complete = trainjob_condition(obj.status, "Complete")
  local suspended = trainjob_condition(obj.status, "Suspended")
  local jobs, active = trainjob_jobs(obj.status)
  if failed ~= nil then
    hs.status = "Degraded"
    hs.message = condition_text(failed, "The job failed")
  elseif complete ~= nil then
    hs.status = "Healthy"
    hs.message = condition_text(complete, "The job completed")
  elseif suspended ~= nil then
    hs.status = "Suspended"
    hs.message = condition_text(suspended, "The job is suspended")
  elseif obj.spec ~= nil and obj.spec.suspend == true then
    hs.status = "Suspended"
    hs.message = "The job is suspended (spec.suspend)"
  elseif jobs == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for the trainer controller to create the job's JobSet"
  elseif active then
    hs.status = "Progressing"
    hs.message = "Running" .. jobs
  else
    hs.status = "Progressing"
    hs.message = "Waiting for the job's pods" .. jobs
  end
  return hs
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
  hs.message = condition_text(current, "The job failed")
elseif current.type == "Succeeded" then
  hs.status = "Healthy"
  hs.message = condition_text(current, "The job succeeded")
elseif current.type == "Suspended" then
  hs.status = "Suspended"
  hs.message = condition_text(current, "The job is suspended")
elseif current.type == "Restarting" then
  hs.status = "Progressing"
  hs.message = with_replicas("Restarting: " .. condition_text(current, "a replica failed and is restarting"))
elseif current.type == "Running" then
  hs.status = "Progressing"
  hs.message = with_replicas(condition_text(current, "The job is running"))
else
  hs.status = "Progressing"
  hs.message = with_replicas(condition_text(current, "The job was created"))
end
return hs
