-- POST the same JSON body to the same path every request (the query cells).
-- Arguments: the path, the body.

local path
local body

function init(args)
  path = args[1]
  body = args[2]
end

function request()
  return wrk.format("POST", path, json_headers, body)
end
