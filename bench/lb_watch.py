# lb_watch.py OUT DNSNAME VIP NS... : per namespace a netlink socket subscribed to nf_tables'
# notifications (NFNLGRP_NFTABLES), opened in that namespace and all read by this one process
# (timestamps of every change of a set element keyed by VIP, as the kernel announces it), and in
# the first namespace a DNS poller asking 127.0.0.11 for DNSNAME every 5 ms (timestamps of every
# change of the answer). Lines on OUT:
#   <unix ms> nft <ns index> <add|del> <element count>   |   <unix ms> dns <sorted addresses>
# "ready" on stdout once every socket is subscribed; runs until SIGTERM.
# One process with a socket per namespace, not an `nft monitor` per namespace: at 100 client
# namespaces a host, a backend change woke 100 monitors that formatted it, on the two cores
# the daemons being measured share.
import ctypes, os, random, selectors, signal, socket, struct, sys, threading, time
out, name, vip, nss = sys.argv[1], sys.argv[2], socket.inet_aton(sys.argv[3]), sys.argv[4:]
f = open(out, "a", buffering=1)
lock = threading.Lock()
def emit(s):
    with lock:
        f.write("%.3f %s\n" % (time.time() * 1000, s))
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET, NETLINK_NETFILTER, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES = 0x40000000, 12, 270, 1, 7
SO_RCVBUFFORCE = 33
def setns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            sys.exit("setns %s: %s" % (path, os.strerror(ctypes.get_errno())))
    finally:
        os.close(fd)
home = "/proc/%d/task/%d/ns/net" % (os.getpid(), threading.get_native_id())
home_fd = os.open(home, os.O_RDONLY)
socks = []
for ns in nss:
    setns(ns)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.bind((0, 0))
    s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    s.setblocking(False)
    socks.append(s)
if libc.setns(home_fd, CLONE_NEWNET) != 0:
    sys.exit("setns back: %s" % os.strerror(ctypes.get_errno()))
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = (10 << 8) | 12, (10 << 8) | 14
def attrs(b):
    """(type, payload) of each netlink attribute in b."""
    i = 0
    while i + 4 <= len(b):
        ln, t = struct.unpack_from("=HH", b, i)
        if ln < 4:
            return
        yield t & 0x3FFF, b[i + 4:i + ln]
        i += (ln + 3) & ~3
def vip_elems(payload):
    """How many of a set-element message's elements have a key that starts with the VIP
    (`be`'s VIP . slot, `svc`'s and `empty`'s VIP), in table shoal_lb; 0 otherwise."""
    top = dict(attrs(payload[4:]))  # after the nfgenmsg
    if top.get(1, b"").rstrip(b"\0") != b"shoal_lb":
        return 0
    n = 0
    for t, elem in attrs(top.get(3, b"")):  # NFTA_SET_ELEM_LIST_ELEMENTS: NFTA_LIST_ELEM
        key = dict(attrs(elem)).get(1, b"")  # NFTA_SET_ELEM_KEY: NFTA_DATA_VALUE
        if dict(attrs(key)).get(1, b"")[:4] == vip:
            n += 1
    return n
def drain(i, s):
    while True:
        try:
            d = s.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as e:  # ENOBUFS: events were lost; say so (the analysis counts it)
            emit("nft %d lost %s" % (i, e))
            continue
        off = 0
        while off + 16 <= len(d):
            ln, t = struct.unpack_from("=IH", d, off)
            if ln < 16:
                break
            if t in (NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM):
                n = vip_elems(d[off + 16:off + ln])
                if n:
                    emit("nft %d %s %d" % (i, "add" if t == NFT_MSG_NEWSETELEM else "del", n))
            off += (ln + 3) & ~3
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
    setns(nss[0])  # this thread only
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
for i, s_ in enumerate(socks):
    sel.register(s_, selectors.EVENT_READ, i)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        drain(key.data, key.fileobj)
