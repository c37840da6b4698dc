"""The front door under abuse (dev/bench's `abuse` phase): what a hostile local user or network
client can cost the daemon, measured from the outside.

  forged     daemon CPU per refused forged webhook: a 60,000-candidate header (the issue's
             reproduction, refused by its headers alone) and the worst header that reaches the
             MAC (four 64-hex candidates, 64 KiB body)
  health     /v1/health p99 from a new API connection while 8 processes send those forged
             webhooks as fast as they can
  batches    daemon RSS above idle while 16 clients run batches of maximal results
             (4 x 4 MB per batch, under the 16 MiB api.max_response_bytes)
  idle       /v1/health p99 from a new connection while another uid holds 10,000 connections
             open on the API socket (most are refused at once by the connection limits)
"""
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import threading
import time

ABUSE_SECONDS = float(os.environ.get("BENCH_ABUSE_SECONDS", "5"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("credswap", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def health_once(api_socket):
    """Milliseconds for GET /v1/health on a new connection, and its status."""
    t0 = time.perf_counter()
    c = UnixHTTP(api_socket, timeout=10)
    try:
        c.request("GET", "/v1/health")
        status = c.getresponse().status
    except OSError:
        status = 0
    finally:
        c.close()
    return (time.perf_counter() - t0) * 1000, status


def probe_health(api_socket, seconds, interval=0.01):
    latencies, statuses = [], {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ms, status = health_once(api_socket)
        latencies.append(ms)
        statuses[status] = statuses.get(status, 0) + 1
        time.sleep(interval)
    return {"probes": len(latencies), "statuses": statuses,
            "p50_ms": round(percentile(latencies, 0.5), 2), "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(max(latencies), 2)}


def forged_headers(kind):
    now = int(time.time())
    if kind == "many_candidates":
        return f"t={now}," + ",".join(["v1=00"] * 60000)
    return f"t={now}," + ",".join(["v1=" + "ab" * 32] * 4)


def send_forged(port, kind, count, body):
    """Sends `count` forged webhooks over keep-alive connections; counts the answers."""
    statuses = {}
    header = forged_headers(kind)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(count):
        try:
            c.request("POST", "/v1/webhooks/rotate", body=body,
                      headers={"x-credswap-signature": header, "content-type": "application/json"})
            r = c.getresponse()
            r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.getheader("connection", "").lower() == "close":
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        except OSError:
            statuses["error"] = statuses.get("error", 0) + 1
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    return statuses


# A forged webhook's body: 64 KiB of valid JSON naming a target.
FORGED_BODY = b'{"target":"one","pad":"' + b"x" * (64 * 1024 - 40) + b'"}'


def flood_forever(port, kind, stop, counter):
    body = FORGED_BODY
    header = forged_headers(kind)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        try:
            c.request("POST", "/v1/webhooks/rotate", body=body,
                      headers={"x-credswap-signature": header, "content-type": "application/json"})
            c.getresponse().read()
            with counter.get_lock():
                counter.value += 1
        except OSError:
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def forged(b, daemon_pid, api_socket):
    body = FORGED_BODY
    out = {}
    for kind, n in (("many_candidates", 200), ("four_candidates_64k_body", 2000)):
        send_forged(b.hook_port, kind, 20, body)  # warm-up
        cpu = cpu_seconds(daemon_pid)
        statuses = send_forged(b.hook_port, kind, n, body)
        used = cpu_seconds(daemon_pid) - cpu
        out[kind] = {"requests": n, "statuses": {str(k): v for k, v in statuses.items()},
                     "daemon_cpu_us_per_request": round(used / n * 1e6, 1)}
    # Eight processes flooding while the prober asks for /v1/health on new connections.
    stop = multiprocessing.Event()
    counter = multiprocessing.Value("l", 0)
    floods = [multiprocessing.Process(target=flood_forever,
                                      args=(b.hook_port, "four_candidates_64k_body", stop, counter))
              for _ in range(8)]
    for p in floods:
        p.start()
    time.sleep(1)  # the flood reaches its rate
    cpu = cpu_seconds(daemon_pid)
    start_count = counter.value
    health = probe_health(api_socket, ABUSE_SECONDS)
    health["forged_per_s"] = round((counter.value - start_count) / ABUSE_SECONDS)
    health["daemon_cpu_share"] = round((cpu_seconds(daemon_pid) - cpu) / ABUSE_SECONDS, 2)
    stop.set()
    for p in floods:
        p.join(timeout=30)
    out["health_under_8_forgers"] = health
    return out


def batch_client(api_socket, stop, result, i):
    body = json.dumps({"statements": [{"sql": "SELECT repeat('x', 4000000)"}] * 4})
    statuses = {}
    while not stop.is_set():
        c = UnixHTTP(api_socket, timeout=60)
        try:
            c.request("POST", "/v1/targets/one/batch", body=body, headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.status == 503:
                time.sleep(0.05)  # what a client told Retry-After does, sooner
        except OSError:
            statuses["error"] = statuses.get("error", 0) + 1
        finally:
            c.close()
    result[i] = statuses


def batches(daemon_pid, api_socket):
    time.sleep(1)
    idle = rss_kib(daemon_pid)
    stop = threading.Event()
    results = {}
    clients = [threading.Thread(target=batch_client, args=(api_socket, stop, results, i)) for i in range(16)]
    samples = []
    for t in clients:
        t.start()
    end = time.monotonic() + ABUSE_SECONDS * 2
    while time.monotonic() < end:
        samples.append(rss_kib(daemon_pid))
        time.sleep(0.02)
    stop.set()
    for t in clients:
        t.join()
    statuses = {}
    for s in results.values():
        for k, v in s.items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    return {"clients": 16, "rss_idle_kib": idle, "rss_max_kib": max(samples),
            "rss_above_idle_mib": round((max(samples) - idle) / 1024, 1), "statuses": statuses}


HOLDER = r"""
import socket, sys, time
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
time.sleep(seconds)
"""


def idle_connections(daemon_pid, api_socket):
    fds_before = len(os.listdir(f"/proc/{daemon_pid}/fd"))
    import resource

    def enough_descriptors():  # as root, before setpriv drops to nobody
        resource.setrlimit(resource.RLIMIT_NOFILE, (12000, 12000))
    # The system's python: nobody cannot reach the venv's interpreter under /root.
    holder = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                               "/usr/bin/python3", "-c", HOLDER, api_socket, "10000", str(ABUSE_SECONDS + 2)],
                              stdout=subprocess.PIPE, text=True, preexec_fn=enough_descriptors)
    try:
        connected = int(holder.stdout.readline())
        fds_during = len(os.listdir(f"/proc/{daemon_pid}/fd"))
        health = probe_health(api_socket, ABUSE_SECONDS)
    finally:
        holder.kill()
        holder.wait()
    return {"held_by_other_uid": connected, "daemon_fds_before": fds_before,
            "daemon_fds_while_held": fds_during, **health}


def run(b):
    """Starts a daemon of its own (the API socket open to every uid, no webhook rate limit, the
    unit's descriptor limit) and measures the four figures."""
    api_extra = 'socket_mode = "0666"\n'
    p, _, _ = b.start_daemon("abuse", ["one"], api_extra=api_extra, webhook_rate="0.0",
                             nofile=8192)
    api_socket = b.path("abuse.sock")
    try:
        out = forged(b, p.pid, api_socket)
        out["batches"] = batches(p.pid, api_socket)
        out["idle_connections"] = idle_connections(p.pid, api_socket)
    finally:
        b.stop_daemon(p)
    return out


def table(a):
    lines = ["", "front door under abuse (goal in brackets)"]
    mc, fc = a["many_candidates"], a["four_candidates_64k_body"]
    lines.append(f"  forged webhook, 60,000-candidate header:      {mc['daemon_cpu_us_per_request']:>8} us CPU (< 1000)")
    lines.append(f"  forged webhook, 4 candidates, 64 KiB body:    {fc['daemon_cpu_us_per_request']:>8} us CPU (< 1000)")
    h = a["health_under_8_forgers"]
    lines.append(f"  /v1/health p99, 8 forgers ({h['forged_per_s']}/s):    {h['p99_ms']:>8} ms (< 10)")
    m = a["batches"]
    lines.append(f"  RSS above idle, 16 clients of maximal batches: {m['rss_above_idle_mib']:>7} MiB (<= 64) {m['statuses']}")
    i = a["idle_connections"]
    lines.append(f"  /v1/health p99, 10,000 idle connections:      {i['p99_ms']:>8} ms (< 10); "
                 f"{i['held_by_other_uid']} connected, daemon fds {i['daemon_fds_while_held']}")
    return "\n".join(lines)
