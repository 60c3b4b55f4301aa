-- POST /api/task_runs/ with the same body every time; the run was created before the run.
-- Argument: the JSON body.

local request_text

function init(args)
  request_text = wrk.format("POST", "/api/task_runs/", json_headers, args[1])
end

function request()
  return request_text
end
