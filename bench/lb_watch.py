# watch.py OUT DNSNAME NS... : per namespace an `nft monitor` (timestamps of every element
# change, as the kernel announces it), and in the first namespace a DNS poller asking
# 127.0.0.11 for DNSNAME every 5 ms (timestamps of every change of the answer). Lines on OUT:
#   <unix ms> nft <ns index> <event>   |   <unix ms> dns <sorted addresses, comma-separated>
# "ready" on stdout once every monitor is subscribed; runs until SIGTERM.
import ctypes, os, random, selectors, signal, socket, struct, subprocess, sys, threading, time
out, name, nss = sys.argv[1], sys.argv[2], sys.argv[3:]
f = open(out, "a", buffering=1)
lock = threading.Lock()
def emit(s):
    with lock:
        f.write("%.3f %s\n" % (time.time() * 1000, s))
procs = [subprocess.Popen(["nsenter", "--net=" + ns, "nft", "monitor", "elements"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) for ns in nss]
# subscribed: the monitor holds its netlink socket and sleeps in recv
def subscribed(p):
    try:
        fds = [os.readlink("/proc/%d/fd/%s" % (p.pid, d)) for d in os.listdir("/proc/%d/fd" % p.pid)]
        state = open("/proc/%d/stat" % p.pid).read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return any(x.startswith("socket:") for x in fds) and state == "S"
end = time.time() + 30
while not all(subscribed(p) for p in procs):
    if time.time() > end:
        sys.exit("nft monitor did not start")
    time.sleep(0.01)
def query(qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for part in name.split("."):
        q += bytes([len(part)]) + part.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)
def answers(buf):
    qd, an = struct.unpack(">HH", buf[4:8])
    i = 12
    def skip(i):
        while buf[i]:
            if buf[i] >= 0xC0:
                return i + 2
            i += buf[i] + 1
        return i + 1
    for _ in range(qd):
        i = skip(i) + 4
    ips = []
    for _ in range(an):
        i = skip(i)
        t, _, _, ln = struct.unpack(">HHIH", buf[i:i + 10])
        i += 10
        if t == 1 and ln == 4:
            ips.append(socket.inet_ntoa(buf[i:i + 4]))
        i += ln
    return ",".join(sorted(ips))
def dns():
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(nss[0], os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET, this thread only
        emit("dns-error setns")
        return
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    last = None
    while True:
        qid = random.randrange(65536)
        try:
            s.sendto(query(qid), ("127.0.0.11", 53))
            a = answers(s.recv(1500))
        except OSError:
            a = "-"
        if a != last:
            emit("dns " + (a or "none"))
            last = a
        time.sleep(0.005)
threading.Thread(target=dns, daemon=True).start()
sel = selectors.DefaultSelector()
for i, p in enumerate(procs):
    os.set_blocking(p.stdout.fileno(), False)
    sel.register(p.stdout, selectors.EVENT_READ, i)
def stop(*_):
    for p in procs:
        p.kill()
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
bufs = [b""] * len(procs)
while True:
    for key, _ in sel.select():
        i = key.data
        d = os.read(key.fileobj.fileno(), 65536)
        if not d:
            sel.unregister(key.fileobj)
            continue
        bufs[i] += d
        *lines, bufs[i] = bufs[i].split(b"\n")
        for l in lines:
            if l.strip():
                emit("nft %d %s" % (i, l.decode(errors="replace").strip()))
