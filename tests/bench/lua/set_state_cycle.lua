-- POST /api/task_runs/{id}/set_state over a pool of runs, each run alternating RUNNING and
-- COMPLETED (a COMPLETED state without a result may be left again): every proposal is
-- accepted. Arguments: a file of run ids and the number of wrk threads; each thread cycles
-- through every n-th id, so that concurrent requests rarely propose for the same run.

local paths = {}
local proposals = {}
local next_index = 0

function init(args)
  local threads = tonumber(args[2])
  local index = 0
  for id in io.lines(args[1]) do
    if index % threads == (thread_number - 1) then
      table.insert(paths, "/api/task_runs/" .. id .. "/set_state")
      table.insert(proposals, 0)
    end
    index = index + 1
  end
end

local running = '{"state":{"type":"RUNNING"}}'
local completed = '{"state":{"type":"COMPLETED"}}'

function request()
  next_index = next_index % #paths + 1
  proposals[next_index] = proposals[next_index] + 1
  local body = proposals[next_index] % 2 == 1 and running or completed
  return wrk.format("POST", paths[next_index], json_headers, body)
end
