-- POST /api/task_runs/ with a task_key no request used before. Argument: a prefix unique to
-- this run; each thread adds its number and random digits, each request a counter.

local prefix
local counter = 0

function init(args)
  prefix = unique_prefix(args[1])
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"task_key":%s,"dynamic_key":"0","tags":["bench"]}',
    json_string(prefix .. "-" .. counter))
  return wrk.format("POST", "/api/task_runs/", json_headers, body)
end
