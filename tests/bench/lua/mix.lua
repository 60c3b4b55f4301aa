-- Half creates of a new key, half reads of one existing run, alternating in each thread.
-- Arguments: the run's id, and a prefix unique to this run (as in create_new.lua).

local read_path
local prefix
local counter = 0

function init(args)
  read_path = "/api/task_runs/" .. args[1]
  prefix = unique_prefix(args[2])
end

function request()
  counter = counter + 1
  if counter % 2 == 0 then
    return wrk.format("GET", read_path)
  end
  local body = string.format(
    '{"task_key":%s,"dynamic_key":"0","tags":["bench"]}',
    json_string(prefix .. "-" .. counter))
  return wrk.format("POST", "/api/task_runs/", json_headers, body)
end
