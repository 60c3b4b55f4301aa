-- POST /api/task_runs/{id}/set_state proposing RUNNING for a PENDING run that no request
-- touched before. Arguments: a file of run ids (one per line, created for this run) and the
-- number of wrk threads; each thread takes every n-th id. Should the ids run out, the thread
-- starts over (a RUNNING -> RUNNING proposal) and counts those requests as reused.

local paths = {}
local uses = 0

function init(args)
  local threads = tonumber(args[2])
  local index = 0
  for id in io.lines(args[1]) do
    if index % threads == (thread_number - 1) then
      table.insert(paths, "/api/task_runs/" .. id .. "/set_state")
    end
    index = index + 1
  end
end

local body = '{"state":{"type":"RUNNING"},"force":false}'

function request()
  uses = uses + 1
  if uses > #paths then
    reused = reused + 1
  end
  return wrk.format("POST", paths[(uses - 1) % #paths + 1], json_headers, body)
end
