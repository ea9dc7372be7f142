#!/usr/bin/env python3
"""bench/timeline.py — the create_timeline figure's two halves (see bench/figures/create_timeline.sh).

  timeline.py watch SVC N DEADLINE_S OUT -- CLI...
      polls `CLI service ps --format json SVC` until N of SVC's tasks run; writes OUT, a JSON
      object {"t1": ms, "seen": {task id: ms}}: when each task was first seen running (the
      answer's time) and when all were. Exits 1 (with the reason on stderr) at the deadline or
      once N tasks failed.
  timeline.py table T0 SEEN LOG...
      reads the timeline events (target shoal::timeline, see proto/src/timeline.rs) from the
      hosts' daemon logs and prints, for the tasks in SEEN, per step: how many tasks passed it,
      the step's own duration (since the task's previous step) and the time since T0 (the
      `service create` call), as p50/p90/p99/max in ms.

Lab hosts are namespaces on one machine, so all logs share one clock. The steps and their order
are read from proto/src/timeline.rs, so the table follows the code.
"""

import calendar
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS_RS = os.path.join(HERE, "..", "proto", "src", "timeline.rs")

ANSI = re.compile(r"\x1b\[[0-9;]*m")
EVENT = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z\s.*?\btimeline step=(\S+)(.*)$")
FIELD = re.compile(r"\b(task|container)=(\S+)")


def now_ms():
    return int(time.time() * 1000)


def steps():
    """The step names, in order, from STEPS in proto/src/timeline.rs."""
    src = open(STEPS_RS).read()
    consts = dict(re.findall(r'pub const ([A-Z_]+): &str = "([^"]+)";', src))
    m = re.search(r"pub const STEPS: \[&str; \d+\] = \[(.*?)\];", src, re.S)
    if not m:
        sys.exit(f"timeline.py: no STEPS array in {STEPS_RS}")
    return [consts[n.strip()] for n in m.group(1).split(",") if n.strip()]


def watch(svc, n, deadline_s, out, cli):
    end = now_ms() + deadline_s * 1000
    seen = {}
    while True:
        p = subprocess.run(cli + ["service", "ps", "--format", "json", svc], capture_output=True, text=True,
                           timeout=60)
        at = now_ms()
        try:
            tasks = [t["task"] for t in json.loads(p.stdout)]
        except (ValueError, KeyError, TypeError):
            tasks = []
        failed = 0
        for t in tasks:
            state = t["status"]["state"]
            if t["desired"] == "running" and state == "running":
                seen.setdefault(t["id"], at)
            failed += state in ("failed", "rejected")
        running = sum(1 for t in tasks if t["desired"] == "running" and t["status"]["state"] == "running")
        if running >= n:
            live = {t["id"] for t in tasks if t["desired"] == "running" and t["status"]["state"] == "running"}
            json.dump({"t1": at, "seen": {k: v for k, v in seen.items() if k in live}}, open(out, "w"))
            return 0
        if failed >= n:
            print(f"timeline.py: {failed} tasks of {svc} failed or were rejected", file=sys.stderr)
            return 1
        if at >= end:
            print(f"timeline.py: {running} of {n} tasks of {svc} running after {deadline_s} s", file=sys.stderr)
            return 1
        time.sleep(0.1)


def log_ms(date, frac):
    t = time.strptime(date, "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) * 1000 + (float(frac) * 1000 if frac else 0.0)


def read_events(paths):
    """{task: {step: first ms}} from the logs (the shim step is keyed by container)."""
    first = {}
    by_container = {}
    shim = {}
    for path in paths:
        with open(path, errors="replace") as f:
            for line in f:
                if "timeline" not in line:
                    continue
                m = EVENT.match(ANSI.sub("", line))
                if not m:
                    continue
                at = log_ms(m.group(1), m.group(2))
                step = m.group(3)
                fields = dict(FIELD.findall(m.group(4)))
                task, container = fields.get("task", ""), fields.get("container", "")
                if task and container:
                    by_container[container] = task
                if task:
                    s = first.setdefault(task, {})
                    s[step] = min(s.get(step, at), at)
                elif container:
                    shim[container] = min(shim.get(container, at), at)
    for container, at in shim.items():
        task = by_container.get(container)
        if task:
            s = first.setdefault(task, {})
            s["shim"] = min(s.get("shim", at), at)
    return first


def pct(xs, p):
    """Nearest-rank percentile of sorted xs."""
    i = max(1, -(-len(xs) * p // 100))
    return xs[int(i) - 1]


def table(t0, seen_path, logs):
    order = steps()
    seen = json.load(open(seen_path))["seen"]
    events = read_events(logs)
    rows = []
    for step in order:
        durs, since = [], []
        for task, seen_at in seen.items():
            have = dict(events.get(task, {}))
            have["seen"] = seen_at
            if step not in have:
                continue
            earlier = [have[s] for s in order[: order.index(step)] if s in have]
            since.append(have[step] - t0)
            durs.append(have[step] - (earlier[-1] if earlier else t0))
        rows.append((step, sorted(durs), sorted(since)))
    n = len(seen)
    print(f"create_timeline: {n} tasks; ms per step (since the task's previous step; t0 for the first) "
          f"and since t0 (`service create`)")
    print(f"{'step':<11} {'tasks':>5} | {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} | "
          f"{'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for step, durs, since in rows:
        if not durs:
            print(f"{step:<11} {0:>5} | {'-':>7} {'-':>7} {'-':>7} {'-':>7} | {'-':>7} {'-':>7} {'-':>7} {'-':>7}")
            continue
        d = " ".join(f"{pct(durs, p):>7.0f}" for p in (50, 90, 99, 100))
        s = " ".join(f"{pct(since, p):>7.0f}" for p in (50, 90, 99, 100))
        print(f"{step:<11} {len(durs):>5} | {d} | {s}")
    return 0


def main(argv):
    if len(argv) >= 6 and argv[0] == "watch" and "--" in argv:
        i = argv.index("--")
        svc, n, deadline, out = argv[1:5]
        return watch(svc, int(n), int(deadline), out, argv[i + 1:])
    if len(argv) >= 4 and argv[0] == "table":
        return table(int(argv[1]), argv[2], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
