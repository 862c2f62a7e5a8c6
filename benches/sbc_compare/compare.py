#!/usr/bin/env python3
"""Whole-stack comparison: sbc-edge against Kamailio + rtpengine, same calls, same run.

Both stacks do one job: SIP over TLS on both legs, topology hiding, SDES on both legs with
fresh keys per leg (the trunk answers AES_CM_128_HMAC_SHA1_32, a suite the caller did not
offer, so rtpengine cannot pass the caller's key through). The call path, identical for
both (sipp has no TLS in Debian, stunnel wraps it, deploy/sipp/stunnel-*.conf.in):

  sipp UAC -TCP-> stunnel client -TLS-> SUT -TLS-> stunnel server -TCP-> sipp UAS

with deploy/sipp/run.sh driving sipp (deploy/sipp/uac_basic.xml, uas_srtp32.xml here).

Figures per run, for each stack:
  cps      highest calls/s with zero failed calls (ramp, then bisect), with the CPU of
           the SUT, sipp and stunnel at that step (which one saturates);
  cpu      SUT CPU ms per call (utime + stime of every SUT process from /proc) at a
           reference rate both pass;
  mem      PSS of every SUT process per established call at --mem-calls calls (minus
           idle), the count checked from the media sockets open;
  tls      full TLS handshakes/s, one connection per "call" (handshake + SIP OPTIONS +
           answer + close), closed-loop clients ramped until the first failure;
  media    benches/media_load.rs for both relays (SBC_MEDIA_PEER=rtpengine for the peer):
           relay CPU µs per packet and latency p99 at 500 and 1,000 SRTP calls.
Then the median over --runs runs, printed as one table (and written as JSON).

--recording: sbc-edge only, recording (SIPREC) off against on in the same run: the same
tenant without, then with [tenants.recording] (mode always, SRTP, on_failure required) to
a sipp SRS (deploy/sipp/uas_srs.xml behind a third stunnel, as the recording stage of
deploy/sipp/interop.sh runs it); off and on alternate in every run (which goes first too),
each on a freshly started gateway; figures cps and cpu only, plus what the SRS saw (a step
with recording on passes only if the SRS completed a recording for every call).

Stdlib only. Every load step is bounded in calls and time; everything is on loopback;
everything started here is stopped on exit. Run through run.sh (next to this file).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SIPP = os.path.join(ROOT, "deploy", "sipp")
RUN_SH = os.path.join(SIPP, "run.sh")
UAS_SCENARIO = os.path.join(HERE, "uas_srtp32.xml")
SRS_SCENARIO = os.path.join(SIPP, "uas_srs.xml")
STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel") or "stunnel4"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# Ports on 127.0.0.1 (TCP): SUT TLS listener, trunk (stunnel server TLS), the two plain
# TCP ends of sipp. The stacks run one after the other on the same ports.
GW_PORT, TRUNK_PORT, UAC_PORT, UAS_PORT = 5161, 5162, 5171, 5172
NG_PORT = 9922  # outside the media range below
# --recording: the SRS's TLS port (stunnel server) and the plain TCP port of its sipp
SRS_PORT, SRS_SIPP_PORT = 5164, 5175
# Media ports of both relays: 4 per call (RTP + RTCP on each leg), room for 5,000 calls.
# Below the kernel's ephemeral range (32768-60999 here): on a shared machine other
# programs hold thousands of ephemeral UDP ports, and sbc-edge's allocator (16 pairs tried
# in a row) then refused calls with "no media ports available" (seen: 125 of 4,500 calls,
# with another helper's udp_floor running). media_load.rs uses its own fixed range.
MEDIA_MIN, MEDIA_MAX = 10000, 29999
CALLEE_SUITE = "AES_CM_128_HMAC_SHA1_32"
HOLD_MS = 500  # call length of the rate steps, both stacks (short: 6,400 calls/s x 0.5 s
# plus set-up time stays under the 20,000 descriptors at 4 sockets per call)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ /proc sampling


def proc_table() -> dict[int, int]:
    """pid -> ppid of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        out[int(d)] = int(s[s.rfind(")") + 2 :].split()[1])
    return out


def tree(root: int) -> list[int]:
    """root and all its descendants."""
    table = proc_table()
    kids: dict[int, list[int]] = {}
    for p, pp in table.items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in table:
            out.append(p)
            todo.extend(kids.get(p, []))
    return out


def stat_cpu(path: str) -> float:
    """utime + stime from a /proc .../stat file, seconds (0 if it is gone)."""
    try:
        with open(path) as f:
            s = f.read()
    except OSError:
        return 0.0
    fields = s[s.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_secs(pids: list[int]) -> float:
    """utime + stime of the processes (all threads), seconds."""
    return sum(stat_cpu(f"/proc/{p}/stat") for p in pids)


def task_cpu(pids: list[int]) -> dict[int, float]:
    """utime + stime per thread (task) of the processes, seconds, by task id."""
    out = {}
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            out[int(t)] = stat_cpu(f"/proc/{p}/task/{t}/stat")
    return out


def busiest(before: dict[int, float], after: dict[int, float]) -> float:
    """The largest CPU time one thread used between two task_cpu samples, seconds."""
    return max((v - before.get(t, 0.0) for t, v in after.items()), default=0.0)


def mem_kib(pids: list[int]) -> tuple[int, int]:
    """(PSS, RSS) summed over the processes, KiB. PSS divides shared pages among the
    processes sharing them (Kamailio's shared memory pool is mapped by every child), so
    its sum is the stack's real footprint; the RSS sum counts shared pages once per
    process."""
    pss = rss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE_KIB
        except OSError:
            continue
    return pss, rss


def media_sockets(pids: list[int]) -> int:
    """UDP sockets of these processes bound in the relays' media port range (both stacks
    hold 4 per call). Only the SUT's own: other processes on a shared machine bind
    ephemeral UDP ports in the same range."""
    inodes = set()
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    n = 0
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    port = int(cols[1].rsplit(":", 1)[1], 16)
                    if MEDIA_MIN <= port <= MEDIA_MAX and cols[9] in inodes:
                        n += 1
        except (OSError, StopIteration, IndexError):
            continue
    return n


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ processes


class Procs:
    """Everything started here; stopped (TERM, then KILL) in reverse order."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen] = []

    def start(self, args: list[str], logfile: str, **kw) -> subprocess.Popen:
        f = open(logfile, "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f, **kw)
        f.close()
        self.items.append(p)
        return p

    def stop(self, p: subprocess.Popen, grace: float = 10.0) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p in self.items:
            self.items.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.items)):
            self.stop(p)


PROCS = Procs()


def wait_for(cond, secs: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + secs
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited ({proc.returncode})")
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {secs} s")


def render(template: str, out: str, values: dict[str, str]) -> None:
    with open(template) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    with open(out, "w") as f:
        f.write(text)


def start_stunnel(conf: str, logfile: str) -> subprocess.Popen:
    open(logfile, "w").close()
    p = PROCS.start([STUNNEL, conf], logfile + ".stderr")

    def ok() -> bool:
        with open(logfile) as f:
            return "Configuration successful" in f.read()

    wait_for(ok, 10, f"stunnel {conf}", p)
    return p


def make_pki(pki: str) -> None:
    """A throwaway CA and two P-256 leaves (gw, trunk): deploy/sipp/test-pki.sh."""
    subprocess.run([os.path.join(SIPP, "test-pki.sh"), pki, "sbc_compare test CA"], check=True,
                   capture_output=True, timeout=60)


# ------------------------------------------------------------------ the two stacks


class Stack:
    """One SUT with its stunnel chain. Subclasses start the SUT itself."""

    name = ""
    srs = False  # --recording: a sipp SRS behind its own stunnel server (see CallRun)

    def __init__(self, work: str, pki: str) -> None:
        self.work = os.path.join(work, self.slug())
        self.pki = pki
        os.makedirs(self.work, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.stunnels: list[subprocess.Popen] = []

    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    def start(self) -> None:
        w = self.work
        self.stunnels = [self.stunnel_server("stunnel-server", TRUNK_PORT, UAS_PORT)]
        if self.srs:
            # the SRS as deploy/sipp/interop.sh's recording stage has it: TLS with the
            # trunk's certificate in front of the sipp SRS on plain TCP
            self.stunnels.append(self.stunnel_server("stunnel-srs", SRS_PORT, SRS_SIPP_PORT))
        self.start_sut()
        render(
            os.path.join(SIPP, "stunnel-client.conf.in"),
            f"{w}/stunnel-client.conf",
            {"LOG": f"{w}/stunnel-client.log", "ACCEPT": f"127.0.0.1:{UAC_PORT}",
             "CONNECT": f"127.0.0.1:{GW_PORT}", "SNI": "sni = localhost",
             "VERIFY": f"CAfile = {self.pki}/ca.pem\nverifyChain = yes\ncheckIP = 127.0.0.1",
             "CLIENT_CERT": ""},
        )
        self.stunnels.append(start_stunnel(f"{w}/stunnel-client.conf",
                                           f"{w}/stunnel-client.log"))
        self.procs.append(self.stunnels[-1])

    def stunnel_server(self, name: str, accept: int, connect: int) -> subprocess.Popen:
        """stunnel in server mode (the trunk's certificate) from TLS `accept` to plain TCP
        `connect`, both on 127.0.0.1; kept in self.procs."""
        w = self.work
        render(
            os.path.join(SIPP, "stunnel-server.conf.in"),
            f"{w}/{name}.conf",
            {"LOG": f"{w}/{name}.log", "ACCEPT": f"127.0.0.1:{accept}",
             "CONNECT": f"127.0.0.1:{connect}", "CERT": f"{self.pki}/trunk.pem",
             "KEY": f"{self.pki}/trunk.key"},
        )
        p = start_stunnel(f"{w}/{name}.conf", f"{w}/{name}.log")
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            PROCS.stop(p, 15)
        self.procs = []
        self.stunnels = []
        # Kamailio's children close the listener after the main process is gone
        deadline = time.time() + 10
        while tcp_open(GW_PORT) and time.time() < deadline:
            time.sleep(0.2)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stunnel_pids(self) -> list[int]:
        return [p.pid for p in self.stunnels]

    def start_sut(self) -> None:
        raise NotImplementedError

    def sut_pids(self) -> list[int]:
        raise NotImplementedError


class SbcEdge(Stack):
    name = "sbc-edge"

    def __init__(self, work: str, pki: str, binary: str, recording: bool | None = None) -> None:
        """recording None: the comparison's gateway; False / True: --recording's off / on
        (the same configuration, with [tenants.recording] when on)."""
        if recording is not None:
            self.name = f"sbc-edge recording {'on' if recording else 'off'}"
        self.srs = bool(recording)
        super().__init__(work, pki)
        self.binary = binary

    def start_sut(self) -> None:
        w = self.work
        cfg = f"""# benches/sbc_compare: sbc-edge doing the comparison's job (written by compare.py)
[logging]
level = "warn"

[[listeners]]
name = "public"
address = "127.0.0.1:{GW_PORT}"
certificate = "{self.pki}/gw.pem"
private_key = "{self.pki}/gw.key"

[[tenants]]
id = "demo"
[tenants.recognition]
source_cidrs = ["127.0.0.0/8"]
[tenants.media]
caller_suites = ["AES_CM_128_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_80"]
# the trunk leg is keyed with a suite the caller did not offer, as for rtpengine
callee_suites = ["{CALLEE_SUITE}"]
[[tenants.routes]]
prefix = ""
target = "sips:127.0.0.1:{TRUNK_PORT}"
ca_file = "{self.pki}/ca.pem"
[tenants.limits]
# high enough that the load measures the path, not admission
calls_per_second = 100000.0
call_burst = 100000
max_concurrent_calls = 100000
max_pending_invites = 100000
requests_per_second_per_connection = 1000000.0
{self.recording_toml()}
[flood_guard]
allowlist = ["127.0.0.0/8"]

[media]
address = "127.0.0.1"
port_min = {MEDIA_MIN}
port_max = {MEDIA_MAX}
# sipp sends no RTP: no call may end for lack of media during the memory step
timeout_secs = 3600

[admin]
address = "127.0.0.1:0"
audit_log = "{w}/audit.log"
"""
        with open(f"{w}/sbc-edge.toml", "w") as f:
            f.write(cfg)
        subprocess.run([self.binary, "check-config", f"{w}/sbc-edge.toml"], check=True,
                       capture_output=True, timeout=30)
        p = PROCS.start([self.binary, "--config", f"{w}/sbc-edge.toml"], f"{w}/sbc-edge.log",
                        cwd=w)
        self.procs.append(p)
        wait_for(lambda: tcp_open(GW_PORT), 30, "sbc-edge listener", p)
        self.pid = p.pid

    def recording_toml(self) -> str:
        """[tenants.recording] as deploy/sipp/interop.sh's recording tenant has it."""
        if not self.srs:
            return ""
        return f"""[tenants.recording]
# --recording: every call recorded (SIPREC) to the sipp SRS, SRTP to it; required: a call
# no SRS accepted is refused (503), so it counts as a failed call, never as unrecorded
srs = ["sips:127.0.0.1:{SRS_PORT}"]
mode = "always"
legs = "both"
media = "srtp"
on_failure = "required"
ca_file = "{self.pki}/ca.pem"
"""

    def sut_pids(self) -> list[int]:
        return [self.pid]


class KamailioRtpengine(Stack):
    name = "Kamailio+rtpengine"

    def __init__(self, work: str, pki: str, tcp_children: int, threads: int) -> None:
        super().__init__(work, pki)
        self.tcp_children = tcp_children
        self.threads = threads

    def start_sut(self) -> None:
        w = self.work
        rtp = PROCS.start(
            ["rtpengine", "--config-file=none", "--foreground", "--log-stderr",
             "--log-level=3", "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{NG_PORT}",
             f"--port-min={MEDIA_MIN}", f"--port-max={MEDIA_MAX}", "--table=-1",
             f"--num-threads={self.threads}", "--timeout=3600", "--silent-timeout=3600",
             # release a call's ports at its delete, as sbc-edge does (default: 30 s later)
             "--delete-delay=0"],
            f"{w}/rtpengine.log",
        )
        self.procs.append(rtp)
        self.rtp_pid = rtp.pid
        wait_for(lambda: ng_ping(NG_PORT), 20, "rtpengine ng ping", rtp)
        render(os.path.join(HERE, "kamailio-tls.cfg.in"), f"{w}/tls.cfg", {"PKI": self.pki})
        render(
            os.path.join(HERE, "kamailio.cfg.in"),
            f"{w}/kamailio.cfg",
            {"GW_PORT": str(GW_PORT), "TRUNK_PORT": str(TRUNK_PORT), "NG_PORT": str(NG_PORT),
             "TLS_CFG": f"{w}/tls.cfg", "TCP_CHILDREN": str(self.tcp_children)},
        )
        subprocess.run(["kamailio", "-c", "-f", f"{w}/kamailio.cfg"], check=True,
                       capture_output=True, timeout=30)
        # -DD: stay in the foreground (children still fork); -E: log to stderr;
        # -m: shared memory MB (dialogs, transactions); -M: private memory MB per process
        k = PROCS.start(
            ["kamailio", "-DD", "-E", "-f", f"{w}/kamailio.cfg", "-m", "512", "-M", "16",
             "-w", w, "-P", f"{w}/kamailio.pid"],
            f"{w}/kamailio.log",
        )
        self.procs.append(k)
        self.kam_pid = k.pid
        wait_for(lambda: tcp_open(GW_PORT), 30, "kamailio TLS listener", k)
        time.sleep(0.5)

    def sut_pids(self) -> list[int]:
        return tree(self.kam_pid) + [self.rtp_pid]


def ng_ping(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    try:
        s.sendto(b"p1 d7:command4:pinge", ("127.0.0.1", port))
        return b"pong" in s.recv(512)
    except OSError:
        return False
    finally:
        s.close()


# ------------------------------------------------------------------ figure (a)/(b): calls


SUMMARY = re.compile(
    r"== \S+ \((uac|uas)\): calls=(\d+) successful=(\d+) failed=(\d+).*?measured_rate=([\d.]+)"
)


def parse_summary(path: str) -> dict:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    m = None
    for m in SUMMARY.finditer(text):
        pass
    if not m:
        return {}
    return {"calls": int(m.group(2)), "ok": int(m.group(3)), "failed": int(m.group(4)),
            "rate": float(m.group(5))}


class CallRun:
    """One sipp UAS + UAC pair through one stack: starts both, samples CPU and memory.
    With a stack that records (Stack.srs), also the sipp SRS (deploy/sipp/uas_srs.xml,
    which fails a recording whose INVITE lacks +sip.src, the multipart body, the
    metadata or the two labelled SRTP m-lines)."""

    def __init__(self, stack: Stack, tag: str, rate: float, calls: int, hold_ms: int) -> None:
        self.stack, self.rate, self.calls, self.hold_ms = stack, rate, calls, hold_ms
        self.dir = os.path.join(stack.work, tag)
        os.makedirs(self.dir, exist_ok=True)
        self.bound = int(calls / rate + hold_ms / 1000 + 60)
        # a call fails when an expected message is this late (the UAS waits a whole hold
        # for the BYE)
        self.recv_timeout = hold_ms + 10000

    def start(self) -> None:
        d = self.dir
        self.srs = None
        if self.stack.srs:
            self.srs = self.start_uas(SRS_SCENARIO, SRS_SIPP_PORT, SRS_PORT, "srs")
        self.uas = self.start_uas(UAS_SCENARIO, UAS_PORT, TRUNK_PORT, "uas")
        self.t0 = time.time()
        self.sut0 = cpu_secs(self.stack.sut_pids())
        self.tasks0 = task_cpu(self.stack.sut_pids())
        self.tun0 = cpu_secs(self.stack.stunnel_pids())
        self.gen0 = children_cpu()
        self.uac = PROCS.start(
            [RUN_SH, "basic", "--tcp", f"127.0.0.1:{UAC_PORT}", "-g", f"127.0.0.1:{GW_PORT}",
             "-r", f"{self.rate:g}", "-m", str(self.calls), "-d", str(self.hold_ms),
             "--timeout", str(self.bound), "--recv-timeout", str(self.recv_timeout),
             "--out", d], f"{d}/uac.out")

    def start_uas(self, scenario: str, listen: int, contact: int, tag: str) -> subprocess.Popen:
        """A sipp UAS (deploy/sipp/run.sh) on plain TCP `listen`, reached over TLS at
        `contact` (its stunnel server); output in tag.out, ready once its stats exist."""
        d = self.dir
        p = PROCS.start(
            [RUN_SH, scenario, "--role", "uas", "--listen", f"127.0.0.1:{listen}",
             "--contact", f"127.0.0.1:{contact}", "--timeout", str(self.bound + 30),
             "--recv-timeout", str(self.recv_timeout), "--out", d], f"{d}/{tag}.out")
        name = os.path.splitext(os.path.basename(scenario))[0]
        csv = os.path.join(d, f"{name}-uas.csv")
        wait_for(lambda: os.path.exists(csv) and os.path.getsize(csv) > 0, 15,
                 f"sipp {tag}", p)
        time.sleep(0.3)
        return p

    def load_window(self) -> dict | None:
        """CPU shares over the window in which the UAC starts calls (t0 to t0 +
        calls/rate), from /proc: what runs flat out while the load is on. A failing step
        then drains for seconds (timeouts, retransmissions), which would dilute a share
        taken over the whole step. None if the UAC is gone before the window ends."""
        end = self.t0 + self.calls / self.rate
        while time.time() < end and self.uac.poll() is None:
            time.sleep(min(0.05, max(end - time.time(), 0)))
        if self.uac.poll() is not None:
            return None
        wall = max(time.time() - self.t0, 1e-3)
        pids = self.stack.sut_pids()
        gen = tree(self.uac.pid) + tree(self.uas.pid) + (tree(self.srs.pid) if self.srs else [])
        return {
            "sut_pct": 100 * (cpu_secs(pids) - self.sut0) / wall,
            "sut_top_thread_pct": 100 * busiest(self.tasks0, task_cpu(pids)) / wall,
            "stunnel_pct": 100 * (cpu_secs(self.stack.stunnel_pids()) - self.tun0) / wall,
            # sipp processes alive now; the UAS's CPU before t0 (its start) is counted too
            "sipp_pct": 100 * cpu_secs(gen) / wall,
        }

    def finish(self) -> dict:
        window = self.load_window()
        try:
            self.uac.wait(self.bound + 40)
        except subprocess.TimeoutExpired:
            pass
        PROCS.stop(self.uac, 5)
        t1 = time.time()
        sut1 = cpu_secs(self.stack.sut_pids())
        top_thread = busiest(self.tasks0, task_cpu(self.stack.sut_pids()))
        tun1 = cpu_secs(self.stack.stunnel_pids())
        # the UAS finishes calls in progress on SIGTERM (run.sh), then exits
        PROCS.stop(self.uas, 30)
        srs = self.finish_srs()
        gen1 = children_cpu()
        uac = parse_summary(f"{self.dir}/uac.out")
        uas = parse_summary(f"{self.dir}/uas.out")
        wall = max(t1 - self.t0, 1e-3)
        ok = uac.get("ok", 0)
        r = {
            "rate": self.rate, "calls": self.calls, "ok": ok,
            "failed": uac.get("failed", -1) + max(uas.get("failed", 0), 0),
            "uas_ok": uas.get("ok", 0), "measured_rate": uac.get("rate", 0.0),
            "wall": wall, "sut_cpu": sut1 - self.sut0, "stunnel_cpu": tun1 - self.tun0,
            "sipp_cpu": gen1 - self.gen0,
        }
        if srs is not None:
            r.update(srs)
        r["sut_ms_per_call"] = 1000 * r["sut_cpu"] / max(ok, 1)
        # one thread (or single-threaded process) near 100 %: that is what saturates,
        # whatever the sum says
        r["sut_top_thread_pct"] = 100 * top_thread / wall
        for k in ("sut", "stunnel", "sipp"):
            r[f"{k}_pct"] = 100 * r[f"{k}_cpu"] / wall
        # shares while calls are being started, when the UAC lasted that long
        r["window"] = window is not None
        r.update(window or {})
        r["pass"] = (
            self.uac.returncode == 0 and ok == self.calls and r["failed"] == 0
            and uas.get("ok", 0) == self.calls and r["measured_rate"] >= 0.9 * self.rate
            and (srs is None or (srs["srs_ok"] == self.calls and srs["srs_failed"] == 0))
        )
        if not r["pass"]:
            if not uac or not uas or (srs is not None and srs["srs_calls"] < 0):
                r["why"] = "no sipp summary"
            elif srs is not None and r["failed"] == 0 and srs["srs_ok"] != self.calls:
                r["why"] = (f"the SRS completed {srs['srs_ok']} recordings of {self.calls}"
                            f" calls ({srs['srs_failed']} failed)")
            elif r["measured_rate"] < 0.9 * self.rate and r["failed"] == 0:
                r["why"] = "calls started below 90 % of the rate (sipp throttled: answers late)"
            else:
                r["why"] = f"{r['failed']} failed calls"
        return r

    def finish_srs(self) -> dict | None:
        """Stop the SRS once the calls are over (the gateway's BYE to it follows each
        call's end: a moment first) and read its summary; None without an SRS."""
        if self.srs is None:
            return None
        time.sleep(1.0)
        PROCS.stop(self.srs, 30)
        s = parse_summary(f"{self.dir}/srs.out")
        return {"srs_calls": s.get("calls", -1), "srs_ok": s.get("ok", 0),
                "srs_failed": s.get("failed", -1)}


def rate_step(stack: Stack, rate: float, secs: float) -> dict:
    calls = max(int(rate * secs), 1)
    run = CallRun(stack, f"rate-{rate:g}", rate, calls, HOLD_MS)
    run.start()
    r = run.finish()
    log(f"  {stack.name} {rate:g} cps x {calls}: {'pass' if r['pass'] else 'FAIL'}"
        f" ok={r['ok']} failed={r['failed']} measured={r['measured_rate']:.1f}"
        f" SUT {r['sut_pct']:.0f}% (busiest thread {r['sut_top_thread_pct']:.0f}%,"
        f" {r['sut_ms_per_call']:.2f} ms/call)"
        f" sipp {r['sipp_pct']:.0f}% stunnel {r['stunnel_pct']:.0f}%"
        + (f" SRS recorded {r['srs_ok']}/{r['srs_calls']} (failed {r['srs_failed']})"
           if "srs_ok" in r else "")
        + f"{'' if r['pass'] else ' (' + r.get('why', '') + ')'}")
    time.sleep(1.0)
    return r


def max_rate(stack: Stack, ramp: list[float], secs: float, bisect: int, ref: float) -> dict:
    steps, lo, hi = [], None, None
    for rate in ramp:
        r = rate_step(stack, rate, secs)
        steps.append(r)
        if r["pass"]:
            lo = r
        else:
            hi = r
            break
    for _ in range(bisect if (lo and hi) else 0):
        mid = round((lo["rate"] + hi["rate"]) / 2)
        if mid in (lo["rate"], hi["rate"]):
            break
        # a failed step can leave the SUT unusable for a while (rtpengine out of ports
        # held by calls whose BYE never came, Kamailio's rtpengine module marking the
        # proxy dead for 60 s): each bisection step starts from a fresh SUT
        stack.stop()
        stack.start()
        r = rate_step(stack, mid, secs)
        steps.append(r)
        if r["pass"]:
            lo = r
        else:
            hi = r
    passed = [s for s in steps if s["pass"]]
    at_ref = [s for s in passed if s["rate"] == ref] or passed[-1:]
    return {
        "max_cps": lo["rate"] if lo else 0.0,
        "capped": hi is None,  # the ramp's top passed: the figure is a lower bound
        "at_max": lo, "first_fail": hi,
        "ms_per_call": at_ref[0]["sut_ms_per_call"] if at_ref else None,
        "ms_per_call_rate": at_ref[0]["rate"] if at_ref else None,
        "steps": steps,
    }


# ------------------------------------------------------------------ figure (c): memory


def memory(stack: Stack, calls: int, rate: float) -> dict:
    pids = stack.sut_pids()
    time.sleep(1.0)
    idle_pss, idle_rss = mem_kib(pids)
    fill = calls / rate
    hold_ms = int((fill + 8) * 1000)
    run = CallRun(stack, f"mem-{calls}", rate, calls, hold_ms)
    run.start()
    time.sleep(fill + 4)
    pids = stack.sut_pids()
    full_pss, full_rss = mem_kib(pids)
    socks = media_sockets(pids)
    r = run.finish()
    out = {
        "calls": calls, "rate": rate, "established_by_sockets": socks / 4,
        "idle_pss_kib": idle_pss, "full_pss_kib": full_pss,
        "idle_rss_kib": idle_rss, "full_rss_kib": full_rss,
        "kib_per_call": (full_pss - idle_pss) / calls,
        "rss_kib_per_call": (full_rss - idle_rss) / calls,
        "pass": r["pass"], "failed": r["failed"], "ok": r["ok"],
    }
    log(f"  {stack.name} memory at {calls} calls ({socks} media sockets = {socks / 4:.0f}"
        f" calls): PSS {idle_pss} -> {full_pss} KiB = {out['kib_per_call']:.1f} KiB/call"
        f" (RSS sum {out['rss_kib_per_call']:.1f}); calls ok={r['ok']} failed={r['failed']}")
    return out


# ------------------------------------------------------------------ figure (d): TLS


def _worker_init() -> None:
    """Pool workers: default signal handling (the runner's SIGTERM handler is for itself)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _tls_worker(args) -> tuple[int, int, str]:
    port, ca, secs, idx = args
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = True
    ok = fail = 0
    first_error = ""
    deadline = time.time() + secs
    n = 0
    while time.time() < deadline:
        n += 1
        msg = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-{idx}-{n}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p{idx}-{n}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {idx}-{n}@probe\r\n"
            f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(msg)
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                    if buf.startswith(b"SIP/2.0 200"):
                        ok += 1
                    else:
                        fail += 1
                        first_error = first_error or f"answer {buf[:40]!r}"
        except (OSError, ssl.SSLError) as e:
            fail += 1
            first_error = first_error or f"{type(e).__name__}: {e}"
    return ok, fail, first_error


def tls_rate(stack: Stack, pki: str, ramp: list[int], secs: float) -> dict:
    best, steps = None, []
    ctx = multiprocessing.get_context("fork")
    for clients in ramp:
        pids = stack.sut_pids()
        n0 = len(pids)
        c0, g0, t0 = cpu_secs(pids), children_cpu(), time.time()
        pool = ctx.Pool(clients, initializer=_worker_init)
        try:
            res = pool.map(_tls_worker, [(GW_PORT, f"{pki}/ca.pem", secs, i)
                                         for i in range(clients)])
        finally:
            pool.close()
            pool.join()
        t1 = time.time()
        pids = stack.sut_pids()
        c1, g1 = cpu_secs(pids), children_cpu()
        ok = sum(r[0] for r in res)
        fail = sum(r[1] for r in res)
        errors = sorted({r[2] for r in res if r[2]})
        wall = t1 - t0
        s = {"clients": clients, "ok": ok, "failed": fail, "per_sec": ok / wall,
             "sut_us_per_conn": 1e6 * (c1 - c0) / max(ok, 1), "sut_pct": 100 * (c1 - c0) / wall,
             "gen_pct": 100 * (g1 - g0) / wall, "errors": errors[:3]}
        steps.append(s)
        time.sleep(1.0)
        if not stack.alive() or len(stack.sut_pids()) < n0:
            s["crashed"] = True
            # its children are gone from /proc: their CPU cannot be summed
            s["sut_us_per_conn"] = s["sut_pct"] = None
        log(f"  {stack.name} TLS {clients} clients: {s['per_sec']:.0f} conn/s ok={ok}"
            f" failed={fail} SUT {fmt(s['sut_pct'])}% ({fmt(s['sut_us_per_conn'])} µs/conn)"
            f" generator {s['gen_pct']:.0f}%{' first errors: ' + str(errors[:3]) if fail else ''}"
            f"{' A SUT PROCESS EXITED (see its log)' if s.get('crashed') else ''}")
        if s.get("crashed"):
            break
        if fail or not stack.alive():
            break
        if best is None or s["per_sec"] > best["per_sec"]:
            best = s
    last = steps[-1] if steps else {}
    return {"best": best, "steps": steps,
            "failed_at": last["clients"] if last.get("failed") or last.get("crashed") else None,
            "crashed": bool(last.get("crashed")),
            "top": max(steps, key=lambda s: s["per_sec"]) if steps else None}


# ------------------------------------------------------------------ figure (e): media

MEDIA_RE = {
    "p99_us": re.compile(r"^latency \(µs\):\s+p50 (\d+)\s+p99 (\d+)", re.M),
    "cpu": re.compile(r"^relay CPU:\s+([\d.]+) s \(([\d.]+) % of one core\).*?([\d.]+) CPU s per "
                      r"million packets delivered", re.M),
    "loss": re.compile(r"^packets:.*?lost \d+ \(([\d.]+) %\)", re.M),
    "rekeyed": re.compile(r"(\d+) re-keyed by rtpengine .*?, (\d+) passed through"),
}


def media(binary: str, gateway: str, peer: str, calls: int, secs: int, logdir: str) -> dict:
    env = dict(os.environ, SBC_MEDIA_CALLS=str(calls), SBC_MEDIA_SECS=str(secs),
               SBC_MEDIA_CALLEE_SUITE=CALLEE_SUITE, SBC_EDGE_BIN=gateway)
    if peer == "rtpengine":
        env["SBC_MEDIA_PEER"] = "rtpengine"
    else:
        env.pop("SBC_MEDIA_PEER", None)
    path = os.path.join(logdir, f"media-{peer}-{calls}.out")
    for attempt in range(3):
        try:
            p = subprocess.run([binary], env=env, capture_output=True, text=True,
                               timeout=secs + 180, cwd=ROOT)
            text, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            text, rc = f"timed out: {e}", -1
        with open(path + (f".{attempt}" if attempt else ""), "w") as f:
            f.write(text)
        # media_load's relay ports are fixed (40000-49999): other benchmarks on a shared
        # machine can hold many of them (seen: another media_load, a udp_floor with
        # thousands of sockets) and the set-up fails before any figure; try again
        if MEDIA_RE["cpu"].search(text) or attempt == 2:
            break
        log(f"  media {peer} {calls} calls: no figures (rc={rc}), again in 20 s; {path}")
        time.sleep(20)
    out = {"rc": rc, "log": path}
    m = MEDIA_RE["p99_us"].search(text)
    if m:
        out["p50_us"], out["p99_us"] = float(m.group(1)), float(m.group(2))
    m = MEDIA_RE["cpu"].search(text)
    if m:
        out["cpu_pct"] = float(m.group(2))
        out["us_per_packet"] = float(m.group(3))  # CPU s per million packets = µs/packet
    m = MEDIA_RE["loss"].search(text)
    if m:
        out["loss_pct"] = float(m.group(1))
    m = MEDIA_RE["rekeyed"].search(text)
    if m:
        out["passed_through"] = int(m.group(2))
    log(f"  media {peer} {calls} calls: rc={rc} "
        + " ".join(f"{k}={v}" for k, v in out.items() if k not in ("log", "rc")))
    return out


# ------------------------------------------------------------------ build, run, table


def build(target: str, with_bench: bool) -> tuple[str, str]:
    """The release gateway and (with_bench) the media_load bench binary (cargo, bounded)."""
    log("cargo build --release --bin sbc-edge"
        + ("; cargo bench --bench media_load --no-run" if with_bench else ""))
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "sbc-edge"], cwd=ROOT,
                   check=True, timeout=3600)
    gateway = os.path.join(target, "release", "sbc-edge")
    if not with_bench:
        return gateway, ""
    p = subprocess.run(["cargo", "bench", "--bench", "media_load", "--no-run",
                        "--message-format=json"], cwd=ROOT, check=True, timeout=3600,
                       capture_output=True, text=True)
    bench = None
    for line in p.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg.get("target", {}).get("name") == "media_load":
            bench = msg["executable"]
    if not bench:
        raise RuntimeError("cargo did not report the media_load bench executable")
    return gateway, bench


def versions(gateway: str) -> dict:
    def first(cmd: list[str], pattern: str = "") -> str:
        """The first output line of cmd matching pattern."""
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        lines = ((p.stdout or "") + (p.stderr or "")).strip().splitlines()
        return next((x.strip() for x in lines if re.search(pattern, x)), "?")

    return {
        "kamailio": first(["kamailio", "-v"]), "rtpengine": first(["rtpengine", "--version"]),
        "sipp": first(["sipp", "-v"]), "stunnel": first([STUNNEL, "-version"], r"^stunnel \d"),
        "rustc": first(["rustc", "-V"]), "openssl": first(["openssl", "version"]),
        "sbc-edge": subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                   capture_output=True, text=True).stdout.strip(),
        "machine": f"{os.cpu_count()} vCPU, {platform.processor() or platform.machine()}, "
                   f"{cpu_model()}",
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def one_run(i: int, a, work: str, pki: str, gateway: str, bench: str) -> dict:
    stacks: list[Stack]
    if a.recording:
        stacks = [SbcEdge(work + f"/run{i}", pki, gateway, recording=False),
                  SbcEdge(work + f"/run{i}", pki, gateway, recording=True)]
    else:
        stacks = [SbcEdge(work + f"/run{i}", pki, gateway),
                  KamailioRtpengine(work + f"/run{i}", pki, a.kamailio_children,
                                    os.cpu_count() or 2)]
    if i % 2 == 1:  # alternate which stack goes first: background load drifts
        stacks.reverse()
    res: dict = {"load_start": loadavg()}
    for st in stacks:
        log(f"run {i + 1}: {st.name}, load {loadavg()}")
        r: dict = {"load": loadavg()}
        try:
            st.start()
            time.sleep(1.0)
            pids = st.sut_pids()
            c0 = cpu_secs(pids)
            time.sleep(3.0)
            r["idle_cpu_pct"] = 100 * (cpu_secs(pids) - c0) / 3.0
            # memory first, on the fresh SUT: after the rate steps an allocator keeps what
            # their calls used, and new calls would reuse it (seen: ~0 KiB per call)
            r["mem"] = memory(st, a.mem_calls, a.mem_rate) if a.mem_calls else None
            r["calls"] = max_rate(st, a.ramp, a.step_secs, a.bisect, a.ref_rate)
            if r["calls"]["first_fail"] is not None and a.tls_clients:
                st.stop()
                st.start()
            # last: a handshake flood may take the SUT down (it did Kamailio 5.6.3)
            r["tls"] = tls_rate(st, pki, a.tls_clients, a.tls_secs) if a.tls_clients else None
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            r["error"] = f"{type(e).__name__}: {e}"
            log(f"  {st.name}: ERROR {r['error']}; logs in {st.work}")
        finally:
            st.stop()
        res[st.name] = r
        time.sleep(1.0)
    res["media"] = {}
    for calls in a.media_calls:
        for peer in (("sbc-edge", "rtpengine") if i % 2 == 0 else ("rtpengine", "sbc-edge")):
            res["media"][f"{peer}/{calls}"] = media(bench, gateway, peer, calls, a.media_secs,
                                                    work)
    res["load_end"] = loadavg()
    return res


def med(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def fmt(v, spec: str = ".0f", unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


REC_ON, REC_OFF = "sbc-edge recording on", "sbc-edge recording off"


def table(runs: list[dict], a) -> str:
    """The median table: A against B (--recording: recording on against off)."""
    A, B = (REC_ON, REC_OFF) if a.recording else ("sbc-edge", "Kamailio+rtpengine")

    def col(stack: str, fn) -> list:
        out = []
        for r in runs:
            try:
                out.append(fn(r[stack]))
            except (KeyError, TypeError):
                out.append(None)
        return out

    rows = []

    def row(label: str, fa, fb, spec: str, better: str, note: str = "") -> None:
        va, vb = col(A, fa), col(B, fb)
        ma, mb = med(va), med(vb)
        ratio = ""
        if better:
            ratio = f"{ma / mb:.2f}× ({better})" if (ma is not None and mb) else "n/a"
        per_run = "; ".join(f"{fmt(x, spec)}/{fmt(y, spec)}" for x, y in zip(va, vb))
        rows.append(f"| {label} | {fmt(ma, spec)} | {fmt(mb, spec)} | {ratio} |"
                    f" {per_run} | {note} |")

    row("max calls/s, zero failures", lambda s: s["calls"]["max_cps"],
        lambda s: s["calls"]["max_cps"], ".0f", "higher is better",
        "ramp " + ",".join(f"{x:g}" for x in a.ramp) + f", bisect {a.bisect}×, "
        f"{a.step_secs:g} s steps, hold {HOLD_MS} ms")
    row("… ramp top passed (the figure is a lower bound)", lambda s: int(s["calls"]["capped"]),
        lambda s: int(s["calls"]["capped"]), ".0f", "", "1: no failure up to the ramp's top")
    sat = lambda key: (lambda s: s["calls"]["at_max"][key])  # noqa: E731
    row("… SUT CPU at that rate (% of one core)", sat("sut_pct"), sat("sut_pct"), ".0f", "")
    row("… busiest SUT thread at that rate (%)", sat("sut_top_thread_pct"),
        sat("sut_top_thread_pct"), ".0f", "", "one thread or process near 100 %: saturated")
    row("… sipp CPU at that rate (%)", sat("sipp_pct"), sat("sipp_pct"), ".0f", "")
    row("… stunnel CPU at that rate (%)", sat("stunnel_pct"), sat("stunnel_pct"), ".0f", "")
    ff = lambda key: (lambda s: s["calls"]["first_fail"][key])  # noqa: E731
    row("… first failing rate", ff("rate"), ff("rate"), ".0f", "")
    row("… SUT CPU at the failing rate (%)", ff("sut_pct"), ff("sut_pct"), ".0f", "")
    row(f"SUT CPU ms per call (at {a.ref_rate:g} cps)", lambda s: s["calls"]["ms_per_call"],
        lambda s: s["calls"]["ms_per_call"], ".2f", "lower is better",
        "all SUT processes, utime+stime")
    row("… SUT CPU when idle (% of one core)", lambda s: s["idle_cpu_pct"],
        lambda s: s["idle_cpu_pct"], ".1f", "", "3 s before the ramp, no calls")
    common = [_common_rate(r, A, B) for r in runs]
    va = [_ms_at(r, A, c) for r, c in zip(runs, common)]
    vb = [_ms_at(r, B, c) for r, c in zip(runs, common)]
    ma, mb = med(va), med(vb)
    ratio = f"{ma / mb:.2f}× (lower is better)" if (ma is not None and mb) else "n/a"
    per_run = "; ".join(f"{fmt(x, '.2f')}/{fmt(y, '.2f')}" for x, y in zip(va, vb))
    rows.append(f"| SUT CPU ms per call at the highest ramp rate both passed | {fmt(ma, '.2f')} |"
                f" {fmt(mb, '.2f')} | {ratio} | {per_run} |"
                f" at {', '.join(fmt(c) for c in common)} cps |")
    if a.recording:
        srs_rows(runs, row, rows)
    else:
        other_rows(runs, a, row, rows)
    heads = ("recording on | recording off | ratio on/off | per run (on/off)" if a.recording
             else "sbc-edge | Kamailio + rtpengine | ratio A/B | per run (A/B)")
    head = (f"| figure (median of runs) | {heads} | notes |\n|---|---:|---:|---|---|---|")
    return head + "\n" + "\n".join(rows)


def srs_rows(runs: list[dict], row, rows: list[str]) -> None:
    """--recording: what the SRS saw, so that "on" cannot be "off" unnoticed."""
    at = lambda key: (lambda s: s["calls"]["at_max"][key])  # noqa: E731
    row("… recordings the SRS completed at that rate", at("srs_ok"), at("srs_ok"), ".0f", "",
        "sipp SRS (deploy/sipp/uas_srs.xml): INVITE checked, 200, ACK, BYE, 200")
    row("… calls completed at that rate", at("ok"), at("ok"), ".0f", "")
    row("load average (1 min) when the stack started", lambda s: float(s["load"].split()[0]),
        lambda s: float(s["load"].split()[0]), ".2f", "", "shared machine")
    per_run = []
    for r in runs:
        try:
            steps = r[REC_ON]["calls"]["steps"]
            per_run.append(f"{sum(x['srs_ok'] for x in steps)}/{sum(x['ok'] for x in steps)}")
        except (KeyError, TypeError):
            per_run.append("n/a")
    rows.append("| recordings the SRS completed / calls completed, every step with recording on"
                f" | | | | {'; '.join(per_run)} | failing steps included |")


def other_rows(runs: list[dict], a, row, rows: list[str]) -> None:
    """The comparison's memory, TLS and media rows."""
    row("memory KiB per established call (PSS)", lambda s: s["mem"]["kib_per_call"],
        lambda s: s["mem"]["kib_per_call"], ".1f", "lower is better",
        f"{a.mem_calls} calls held")
    row("… calls established (media sockets / 4)", lambda s: s["mem"]["established_by_sockets"],
        lambda s: s["mem"]["established_by_sockets"], ".0f", "")
    row("… RSS-sum KiB per call (shared pages counted per process)",
        lambda s: s["mem"]["rss_kib_per_call"], lambda s: s["mem"]["rss_kib_per_call"], ".1f", "")
    row("full TLS handshakes/s, zero failures", lambda s: s["tls"]["best"]["per_sec"],
        lambda s: s["tls"]["best"]["per_sec"], ".0f", "higher is better",
        "connection + handshake + OPTIONS + close, Python clients ramped "
        + ",".join(map(str, a.tls_clients)))
    row("… generator (Python clients) CPU at that step (%)", lambda s: s["tls"]["best"]["gen_pct"],
        lambda s: s["tls"]["best"]["gen_pct"], ".0f", "")
    row("… SUT CPU µs per handshake", lambda s: s["tls"]["best"]["sut_us_per_conn"],
        lambda s: s["tls"]["best"]["sut_us_per_conn"], ".0f", "lower is better")
    row("… clients at first failure", lambda s: s["tls"]["failed_at"],
        lambda s: s["tls"]["failed_at"], ".0f", "", "n/a: no failure up to the top")
    row("… runs where a SUT process died in the TLS ramp", lambda s: int(s["tls"]["crashed"]),
        lambda s: int(s["tls"]["crashed"]), ".0f", "", "1 per run it happened")
    for calls in a.media_calls:
        for key, label, spec, better in (
            ("us_per_packet", "relay CPU µs per packet", ".2f", "lower is better"),
            ("p99_us", "latency p99 µs", ".0f", "lower is better"),
            ("loss_pct", "loss %", ".3f", ""),
        ):
            va = [r["media"].get(f"sbc-edge/{calls}", {}).get(key) for r in runs]
            vb = [r["media"].get(f"rtpengine/{calls}", {}).get(key) for r in runs]
            ma, mb = med(va), med(vb)
            ratio = ""
            if better:
                ratio = f"{ma / mb:.2f}× ({better})" if (ma is not None and mb) else "n/a"
            per_run = "; ".join(f"{fmt(x, spec)}/{fmt(y, spec)}" for x, y in zip(va, vb))
            rows.append(f"| media {calls} calls: {label} | {fmt(ma, spec)} | {fmt(mb, spec)} |"
                        f" {ratio} | {per_run} |"
                        f" benches/media_load.rs, {a.media_secs} s |")


def _common_rate(run: dict, a: str, b: str) -> float | None:
    """The highest ramp rate both stacks passed in this run."""
    try:
        ok = [{s["rate"] for s in run[x]["calls"]["steps"] if s["pass"]} for x in (a, b)]
    except (KeyError, TypeError):
        return None
    both = ok[0] & ok[1]
    return max(both) if both else None


def _ms_at(run: dict, stack: str, rate: float | None) -> float | None:
    try:
        return next(s["sut_ms_per_call"] for s in run[stack]["calls"]["steps"]
                    if s["rate"] == rate and s["pass"])
    except (KeyError, TypeError, StopIteration):
        return None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run (a few minutes)")
    p.add_argument("--recording", action="store_true",
                   help="sbc-edge only: calls/s and CPU per call with SIPREC recording off and"
                        " on (a sipp SRS), alternating in every run; no Kamailio, memory, TLS"
                        " or media figures")
    p.add_argument("--runs", type=int, default=None, help="runs to take the median of [3; quick 1]")
    p.add_argument("--mem-calls", type=int, default=None,
                   help="calls held for the memory figure [4500; quick 500]")
    p.add_argument("--skip-build", action="store_true",
                   help="use already built binaries (SBC_EDGE_BIN, SBC_MEDIA_LOAD_BIN)")
    p.add_argument("--work", default=None, help="keep logs here [a new temp dir]")
    p.add_argument("--json", default=None, help="write all results here as JSON")
    a = p.parse_args()
    q = a.quick
    a.runs = a.runs or (1 if q else 3)
    a.mem_calls = a.mem_calls if a.mem_calls is not None else (500 if q else 4500)
    a.ramp = [100, 400, 1600] if q else [100, 200, 400, 800, 1600, 3200, 6400]
    a.step_secs = 3.0 if q else 4.0
    a.bisect = 1 if q else 3
    a.ref_rate = 100.0
    a.mem_rate = 200.0
    a.tls_clients = [1, 4, 16] if q else [1, 2, 4, 8, 16, 32]
    a.tls_secs = 2.0 if q else 3.0
    a.media_calls = [500] if q else [500, 1000]
    if a.recording:
        a.mem_calls, a.tls_clients, a.media_calls = 0, [], []
    a.media_secs = 4 if q else 10
    # Kamailio TCP readers: 2 per vCPU (its docs suggest about as many as cores and more)
    a.kamailio_children = 2 * (os.cpu_count() or 2)
    return a


def main() -> int:
    a = parse_args()
    tools = ("sipp", "openssl", "cargo") + (() if a.recording else ("kamailio", "rtpengine"))
    for tool in tools:
        if not shutil.which(tool):
            print(f"sbc_compare: {tool} not found (apt-get install kamailio kamailio-tls-modules"
                  " rtpengine-daemon sip-tester stunnel4)", file=sys.stderr)
            return 2
    ports = (GW_PORT, TRUNK_PORT, UAC_PORT, UAS_PORT)
    for port in ports + ((SRS_PORT, SRS_SIPP_PORT) if a.recording else ()):
        if tcp_open(port):
            print(f"sbc_compare: 127.0.0.1:{port} is in use", file=sys.stderr)
            return 2
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    if a.skip_build:
        gateway = os.environ.get("SBC_EDGE_BIN") or os.path.join(target, "release", "sbc-edge")
        bench = "" if a.recording else os.environ["SBC_MEDIA_LOAD_BIN"]
    else:
        gateway, bench = build(target, not a.recording)
    work = a.work or tempfile.mkdtemp(prefix="sbc-compare.")
    os.makedirs(work, exist_ok=True)
    pki = os.path.join(work, "pki")
    make_pki(pki)
    info = versions(gateway)
    info["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log(f"work dir {work}; " + "; ".join(f"{k}: {v}" for k, v in info.items()))
    t0 = time.time()
    runs = []
    for i in range(a.runs):
        runs.append(one_run(i, a, work, pki, gateway, bench))
        log(f"run {i + 1}/{a.runs} done after {time.time() - t0:.0f} s, load {loadavg()}")
    out = table(runs, a)
    loads = ", ".join(f"{r['load_start']} → {r['load_end']}" for r in runs)
    print()
    mode = " --recording" if a.recording else ""
    print(f"## sbc_compare{mode}: {a.runs} run(s), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
          f" {time.time() - t0:.0f} s")
    print("; ".join(f"{k}: {v}" for k, v in info.items()))
    print(f"load averages (1/5/15 min) per run, start → end: {loads}")
    print()
    print(out)
    path = a.json or os.path.join(work, "results.json")
    with open(path, "w") as f:
        json.dump({"info": info, "args": vars(a), "runs": runs}, f, indent=1, default=str)
    print(f"\nall results: {path}; logs: {work}")
    return 0


if __name__ == "__main__":
    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("sbc_compare: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        PROCS.stop_all()
