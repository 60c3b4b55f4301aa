-- GET /api/health: the framework's ceiling, no database.

function request()
  return wrk.format("GET", "/api/health")
end
