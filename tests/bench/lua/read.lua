-- GET /api/task_runs/{id} of one run created before the run. Argument: the run's id.

local path

function init(args)
  path = "/api/task_runs/" .. args[1]
end

function request()
  return wrk.format("GET", path)
end
