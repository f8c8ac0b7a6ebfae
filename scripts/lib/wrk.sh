# wrk for the serve scripts (serve_load, serve_soak, serve_faults). Source this file, then:
#
#   ensure_wrk            installs wrk with apt when it is missing (sudo unless root)
#   wrk_post_lua OUT PHOTO
#                         writes OUT, a wrk script that POSTs PHOTO as image/png and prints one
#                         line at the end:
#                           RESULT requests seconds non2xx socket_errors p50_ms p99_ms
#                         (read it with `read -r _ n secs status sock p50 p99 <<<"$line"`)

ensure_wrk() {
  command -v wrk >/dev/null && return 0
  echo "== installing wrk (apt)" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  timeout 600 $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 $sudo apt-get install -y -qq --no-install-recommends wrk
}

wrk_post_lua() {
  cat >"$1" <<LUA
local f = assert(io.open("$2", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "image/png"
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format("RESULT %d %.3f %d %d %.1f %.1f\n", s.requests, s.duration / 1e6, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
LUA
}
