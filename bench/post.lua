-- wrk script: POST the body in $BENCH_BODY (a file) with keep-alive; report as JSON.
-- $BENCH_AUTH, when set, is sent as "Authorization: Bearer <key>".
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
-- $BENCH_PROFILES=N: each request names a random profile p00001..p<N-1> where the
-- body says __PROFILE__ (the profile-scale benchmark's random routing).
local profiles = tonumber(os.getenv("BENCH_PROFILES") or "")
if profiles then
  local template = wrk.body
  math.randomseed(6)
  request = function()
    local name = string.format("p%05d", math.random(1, profiles - 1))
    return wrk.format(nil, nil, nil, (template:gsub("__PROFILE__", name, 1)))
  end
end
-- $BENCH_HEADERS: more headers, one "Name: value" a line.
for name, value in (os.getenv("BENCH_HEADERS") or ""):gmatch("([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

-- Latencies are in microseconds; one JSON line after the human summary.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
