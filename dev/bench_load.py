"""Measures the release daemon: start-up to READY=1 (sd_notify), RSS idle with two targets,
RSS and throughput under 64 keep-alive clients through the socket. Usage: bench_load.py DIR
BINARY, where DIR holds c.toml (two targets, api socket DIR/api.sock). Prints JSON lines."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

w, binary = sys.argv[1], sys.argv[2]
path = w + "/notify.sock"
if os.path.exists(path): os.remove(path)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(path)
env = dict(os.environ, NOTIFY_SOCKET=path, RUST_LOG="warn")
t0 = time.monotonic()
p = subprocess.Popen([binary, "run", "--config", w + "/c.toml"], env=env, stderr=subprocess.DEVNULL)
while True:
    msg = s.recv(4096).decode()
    if msg.startswith("READY=1"):
        ready = time.monotonic() - t0
        break
def rss_kib():
    for line in open(f"/proc/{p.pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
time.sleep(2)
idle = rss_kib()
# Load: 64 keep-alive clients for 5 s through the socket (raw HTTP/1.1).
stop = time.monotonic() + 5
count = [0]
def client():
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(w + "/api.sock")
    body = b'{"sql":"SELECT 1"}'
    req = b"POST /v1/targets/one/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    f = c.makefile("rb")
    while time.monotonic() < stop:
        c.sendall(req)
        line = f.readline(); length = 0
        while True:
            h = f.readline()
            if h in (b"\r\n", b""): break
            if h.lower().startswith(b"content-length:"): length = int(h.split(b":")[1])
        f.read(length); count[0] += 1
ts = [threading.Thread(target=client) for _ in range(64)]
[t.start() for t in ts]
time.sleep(4)
loaded = rss_kib()
[t.join() for t in ts]
p.terminate()
p.wait()
print(json.dumps({
    "startup_to_ready_ms": round(ready * 1000, 1),
    "rss_idle_two_targets_kib": idle,
    "rss_64_clients_kib": loaded,
    "api_select1_req_per_s_64_clients_python_client": round(count[0] / 5),
}))
