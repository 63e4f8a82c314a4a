"""Benchmark: how the ids function's core scales with the number of rules.

    python bench/ids_rules.py [--sizes 10 1000 10000] [--packets 30000] [--runs 3]
        [--seed 1] [--weak-anchors 0.005] [--captures C ...] [--profile-top 15]
        [--max-disturbance 0.1] [--quick] [--out bench/results/ids_rules.json]

rules     a seeded generator writes Suricata rules in the mix of a published
          ruleset (ET Open): ~60 % content only (1-3 contents with depth, offset,
          distance, within, nocase, fast_pattern, some negated), ~25 % content and
          pcre, ~10 % header keywords (flags, dsize, ttl, window, itype) and
          content, ~5 % byte_test / byte_jump / isdataat; tcp, udp, icmp and ip,
          with msg, classtype, reference and metadata. Patterns join a vocabulary
          of real tokens (URIs, user agents, DNS names as |hex| labels, protocol
          words, file magics) with random strings, so nearly no rule fires. A
          share (--weak-anchors) marks a common token as fast_pattern (a user
          agent prefix, "HTTP/1.1 200 OK") and fails later, as some published
          rules do: their programs run on many packets. Five rules written for
          the captures fire (every size holds them, counted in the size). With
          one seed, a smaller set is the first rules of a larger one.
compile   seconds to validate IdsConfig (parse and compile every rule, PCRE2 JIT
          included) and to build Ids (the prefilter automata); memory: the growth
          of RSS over that first build, then what tracemalloc sees retained after,
          and at the peak of, a second build.
process   packets/s of Ids.process alone: the captures (default: every plain
          capture in ../shared/traffic) are looped to --packets, cut into batches
          of 512 and parsed beforehand (parse_packet_batch). Every rule set, and an
          empty one (the ceiling: no rule), runs once per round, in an order
          rotated every round; --runs rounds that other processes left quiet
          (bench/loadwatch; a disturbed round is run again, --runs times at most),
          the best run of each is kept. Packet times are rewritten to one every
          20 us, moving on every pass, and each core keeps its flow tables.
          Ratios to the smallest set and to the ceiling are what to quote: absolute
          figures move 2-3x between machines here. An untimed pass per set counts
          the alerts, the sids that fired and the payload programs run per packet
          (the rules the prefilter let through); the prefilter's automaton pass
          alone (Matcher._found) is timed per payload byte over one loop of the
          captures. With --profile-top, a cProfile of one pass over the largest
          set keeps its top functions by own time.

JSON: machine, code (bench/provenance), settings, rules (the mix actually
generated), captures, per size {compile, memory, process, counts}, ceiling,
disturbance (others' CPU per round, the rounds kept), target (the largest set at
>= 1/4 of the smallest's packets/s), profile.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import string
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadwatch import LoadWatch, add_disturbance_args, wait_quiet
from provenance import code_state, machine, write_report
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from snf.core.tables import BatchState
from snf.functions.ids import Ids, IdsConfig
from snf.functions.ids.match import payload_span
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import read_capture
from snf.packet.headers import FRAG_LATER, Headers
from snf.packet.parse import parse_packet_batch

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC = ROOT.parent / "shared" / "traffic"
BATCH = 512
T0, SPACING_NS = 1_700_000_000 * 10**9, 20_000  # packet times: one every 20 us (50k pkt/s)
TARGET = 0.25  # the largest set's pps over the smallest's, at least (the figure)
VARS = {
    "HOME_NET": "[10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]",
    "EXTERNAL_NET": "!$HOME_NET",
    "HTTP_PORTS": "[80, 81, 591, 3128, 8000, 8080, 8088, 8888]",
}
MIX = {"content": 0.60, "pcre": 0.25, "header": 0.10, "bytes": 0.05}
Batches = list[tuple[PacketBatch, Headers]]

# -- the vocabulary --------------------------------------------------------------------

METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ")
URI_PATHS = (
    b"/wp-admin/", b"/wp-content/plugins/", b"/wp-includes/", b"/cgi-bin/", b"/phpmyadmin/",
    b"/admin/", b"/api/v1/", b"/index.php?option=com_", b"/solr/admin/", b"/actuator/",
    b"/manager/html/", b"/HNAP1/", b"/boaform/admin/", b"/vendor/phpunit/phpunit/src/",
    b"/owa/auth/", b"/remote/login/", b"/dana-na/auth/", b"/xmlrpc.php/", b"/panel/",
    b"/bins/", b"/GponForm/", b"/struts2-showcase/", b"/jenkins/script/", b"/console/",
    b"/_ignition/", b"/mgmt/tm/util/", b"/cgi-bin/luci/", b"/Autodiscover/", b"/ecp/",
    b"/webtools/control/", b"/jmx-console/", b"/invoker/", b"/uploads/", b"/images/",
)  # fmt: skip
URI_ENDS = (b".php", b".asp", b".aspx", b".jsp", b".cgi", b".exe", b".dll", b".bin", b".zip",
            b".jpg", b"/", b".txt", b".ps1", b".hta")  # fmt: skip
PARAMS = (b"?id=", b"?cmd=", b"?page=", b"?file=", b"?q=", b"?u=", b"?action=", b"&pass=",
          b"?token=", b"?exec=", b"?path=", b"&user=")  # fmt: skip
AGENTS = (
    b"curl/", b"Wget/", b"python-requests/", b"Go-http-client/", b"zgrab/", b"masscan/",
    b"sqlmap/", b"Nikto/", b"WinHttpClient", b"Mozilla/4.0 (compatible; MSIE 6.0;",
    b"Java/1.", b"Microsoft BITS/", b"NSIS_Inetc", b"AutoIt", b"okhttp/", b"libwww-perl/",
    b"Hello, World", b"Hakai/", b"Mozi.", b"KrBot",
)  # fmt: skip
HEADERS = (b"Host: ", b"Cookie: ", b"Referer: ", b"Content-Type: ", b"X-Forwarded-For: ",
           b"Authorization: Basic ", b"Accept: ")  # fmt: skip
TLDS = (b"com", b"net", b"org", b"ru", b"cn", b"top", b"xyz", b"tk", b"pw", b"info", b"biz",
        b"su", b"cc", b"io", b"online", b"site", b"club", b"duckdns.org", b"ngrok.io")  # fmt: skip
# (first bytes of a message, ports of the service or None: any)
TCP_WORDS = (
    (b"SSH-2.0-", "22"), (b"220 ", "21"), (b"USER ", "21"), (b"PASS ", "21"),
    (b"EHLO ", "25"), (b"MAIL FROM:", "25"), (b"RCPT TO:", "25"), (b"a001 LOGIN ", "143"),
    (b"+OK ", "110"), (b"\xffSMB", "445"), (b"\xfeSMB", "445"), (b"\x16\x03\x01", "443"),
    (b"\x13BitTorrent protocol", None), (b"\x03\x00\x00", "3389"), (b"JRMI", "1099"),
    (b"*1\r\n$", "6379"), (b"PRIVMSG #", "6667"), (b"NICK ", "6667"), (b"GIOP", None),
)  # fmt: skip
UDP_WORDS = (
    (b"INVITE sip:", "5060"), (b"REGISTER sip:", "5060"), (b"M-SEARCH * HTTP/1.1", "1900"),
    (b"\x30\x29\x02\x01\x00\x04\x06public", "161"), (b"stats\r\n", "11211"),
    (b"\x17\x00\x03\x2a", "123"), (b"\x00\x01\x00\x00\x00\x00\x00\x00", "53"),
)  # fmt: skip
MAGICS = (b"MZ", b"\x7fELF", b"PK\x03\x04", b"%PDF-", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
          b"This program cannot be run in DOS mode", b"<script>", b"powershell -enc ",
          b"cmd.exe /c ", b"/bin/sh -c ", b"eval(base64_decode(")  # fmt: skip
# Common tokens a weak anchor marks as its fast pattern (they occur in most HTTP).
COMMON = (b"User-Agent: Mozilla/5.0 (", b"HTTP/1.1 200 OK\r\n", b"Accept-Encoding: gzip",
          b"Connection: keep-alive\r\n", b"Accept-Language: en-")  # fmt: skip
CATEGORIES = ("WEB_SPECIFIC_APPS", "MALWARE", "EXPLOIT", "SCAN", "TROJAN", "POLICY", "INFO",
              "DNS", "CURRENT_EVENTS", "HUNTING", "USER_AGENTS", "ATTACK_RESPONSE",
              "WEB_SERVER", "MOBILE_MALWARE", "PHISHING", "EXPLOIT_KIT")  # fmt: skip
CLASSTYPES = ("trojan-activity", "web-application-attack", "attempted-admin", "attempted-recon",
              "bad-unknown", "policy-violation", "misc-activity", "command-and-control",
              "exploit-kit", "successful-admin")  # fmt: skip
# Rules the captures fire (sid 9000001..): HTTP requests and responses, DNS, IMAP.
MATCHING = (
    'alert tcp $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS (msg:"SNF BENCH request to bro.org"; '
    'flags:AP,12; content:"GET "; depth:4; content:"Host|3a 20|bro.org"; distance:0; nocase; '
    "classtype:policy-violation; sid:9000001; rev:1;)",
    'alert tcp any $HTTP_PORTS -> any any (msg:"SNF BENCH text/html response"; '
    'content:"HTTP/1."; depth:7; content:"Content-Type|3a 20|text/html"; distance:0; nocase; '
    "classtype:misc-activity; sid:9000002; rev:1;)",
    'alert udp any any -> any 53 (msg:"SNF BENCH DNS query slashdot.org"; '
    'content:"|01 00 00 01|"; offset:2; depth:4; content:"|08|slashdot|03|org|00|"; nocase; '
    "distance:0; fast_pattern; classtype:bad-unknown; sid:9000003; rev:1;)",
    'alert tcp any any -> any $HTTP_PORTS (msg:"SNF BENCH Firefox user agent"; '
    'content:"User-Agent|3a 20|Mozilla/5.0"; pcre:"/User-Agent\\x3a\\x20Mozilla\\/5\\.0 '
    '\\([^)]*\\) Gecko\\/\\d{8} [^\\r\\n]*Firefox\\/\\d/i"; '
    "classtype:policy-violation; sid:9000004; rev:1;)",
    'alert tcp any any -> any any (msg:"SNF BENCH IMAP capability STARTTLS"; '
    'content:"* CAPABILITY"; depth:12; content:"STARTTLS"; distance:0; isdataat:2,relative; '
    "classtype:misc-activity; sid:9000005; rev:1;)",
)


# -- the rule generator ----------------------------------------------------------------


def literal(data: bytes) -> str:
    """A content string: printable ASCII as text, the rest (and ; " | \\ :) as |hex|."""
    out, hexrun = [], []
    for b in data:
        if 0x20 <= b < 0x7F and chr(b) not in ';"|\\:':
            if hexrun:
                out.append("|" + " ".join(hexrun) + "|")
                hexrun = []
            out.append(chr(b))
        else:
            hexrun.append(f"{b:02x}")
    if hexrun:
        out.append("|" + " ".join(hexrun) + "|")
    return "".join(out)


def regex(data: bytes) -> str:
    """`data` as PCRE text: letters and digits as they are, every other byte \\xHH."""
    return "".join(chr(b) if chr(b).isalnum() and b < 0x80 else f"\\x{b:02x}" for b in data)


class RuleGen:
    """Seeded Suricata rules in ET Open's mix; see the module docstring."""

    def __init__(self, seed: int, weak_anchors: float) -> None:
        self.rnd = random.Random(seed)
        self.weak = weak_anchors
        self.kinds: Counter[str] = Counter()

    def word(self, lo: int = 6, hi: int = 12) -> bytes:
        k = self.rnd.randint(lo, hi)
        return "".join(self.rnd.choices(string.ascii_lowercase + string.digits, k=k)).encode()

    def blob(self, lo: int = 4, hi: int = 8) -> bytes:
        return self.rnd.randbytes(self.rnd.randint(lo, hi))

    def uri(self) -> bytes:
        r = self.rnd
        return r.choice(URI_PATHS) + self.word(4, 10) + r.choice(URI_ENDS)

    def domain(self) -> bytes:
        labels = [self.word(5, 14), *self.rnd.choice(TLDS).split(b".")]
        return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"

    def rules(self, count: int, first_sid: int = 2_000_001) -> list[str]:
        kinds, weights = list(MIX), list(MIX.values())
        out = []
        for n in range(count):
            kind = "weak" if self.rnd.random() < self.weak else self.rnd.choices(kinds, weights)[0]
            self.kinds[kind] += 1
            head, options = getattr(self, f"_{kind}")()
            out.append(self._render(head, options, first_sid + n, kind))
        return out

    def _render(self, head: str, options: list[str], sid: int, kind: str) -> str:
        r = self.rnd
        msg = f"ET {r.choice(CATEGORIES)} {kind} {self.word(4, 9).decode()} {sid}"
        date = f"20{r.randint(10, 24)}_{r.randint(1, 12):02d}_{r.randint(1, 28):02d}"
        tail = [
            f"reference:url,{self.word(5, 10).decode()}.example/{sid}",
            f"classtype:{r.choice(CLASSTYPES)}",
            f"sid:{sid}",
            f"rev:{r.randint(1, 9)}",
            f"metadata:created_at {date}, signature_severity Major",
        ]
        return f'alert {head} (msg:"{msg}"; ' + "; ".join(options + tail) + ";)"

    def _content(self) -> tuple[str, list[str]]:
        """1-3 contents with modifiers, some relative, over one of several protocols."""
        r, pick = self.rnd, self.rnd.random()
        if pick < 0.55:  # HTTP request: method, URI (often relative), a header or param
            head = "tcp $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS"
            opts = [f'content:"{literal(r.choice(METHODS))}"', "startswith"]
            opts += [f'content:"{literal(self.uri())}"', "distance:0"]
            if r.random() < 0.4:
                opts.append("nocase")
            if r.random() < 0.5:
                extra = r.choice(HEADERS + PARAMS) + self.word(3, 8)
                opts += [f'content:"{literal(extra)}"', "distance:0", f"within:{len(extra) + 40}"]
            if r.random() < 0.3:
                opts.append(f'content:!"{literal(r.choice(HEADERS).rstrip())}"')
            return head, opts
        if pick < 0.7:  # HTTP response with a marker in its body or headers
            head = "tcp $EXTERNAL_NET $HTTP_PORTS -> $HOME_NET any"
            marker = r.choice(MAGICS + HEADERS) + self.word(6, 10)
            return head, ['content:"HTTP/1."', "depth:7", f'content:"{literal(marker)}"']
        if pick < 0.82:  # a TCP service's greeting or command and a random argument
            word, port = r.choice(TCP_WORDS)
            head = f"tcp $EXTERNAL_NET any -> $HOME_NET {port or 'any'}"
            arg = self.word(max(6, len(word) + 1), max(12, len(word) + 4))  # the fast pattern
            opts = [f'content:"{literal(word)}"', f"depth:{len(word) + r.randint(0, 4)}"]
            opts += [f'content:"{literal(arg)}"', "distance:0", f"within:{len(arg) + 64}"]
            return head, opts
        if pick < 0.92:  # DNS query for a name
            head = "udp $HOME_NET any -> any 53"
            opts = ['content:"|01 00 00 01 00 00 00 00 00 00|"', "offset:2", "depth:10"]
            opts += [f'content:"{literal(self.domain())}"', "distance:0", "nocase", "fast_pattern"]
            return head, opts
        if pick < 0.96:  # UDP service
            word, port = r.choice(UDP_WORDS)
            head = f"udp $EXTERNAL_NET any -> $HOME_NET {port}"
            arg = self.word(max(6, len(word) + 1), max(12, len(word) + 4))
            return head, [f'content:"{literal(word)}"', f'content:"{literal(arg)}"']
        proto = r.choice(("ip", "icmp"))  # a raw marker anywhere
        return f"{proto} $EXTERNAL_NET any -> $HOME_NET any", [f'content:"{literal(self.blob())}"']

    def _pcre(self) -> tuple[str, list[str]]:
        """A content as the anchor, then a pcre over what follows it."""
        r, pick = self.rnd, self.rnd.random()
        if pick < 0.6:  # a URI with a parameter of a shape
            head = "tcp $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS"
            path = r.choice(URI_PATHS) + self.word(4, 10)
            param = r.choice(PARAMS)
            tail = r.choice((r"\d+", r"[a-f0-9]{32}", r"[^&\x20]{40,}", r"(?:\x2e\x2e\x2f){2,}"))
            pcre = f"/{regex(path)}[a-z0-9_-]*\\.(?:php|aspx?|jsp){regex(param)}{tail}/i"
            opts = [f'content:"{literal(r.choice(METHODS))}"', "depth:5"]
            return head, [*opts, f'content:"{literal(path)}"', "nocase", f'pcre:"{pcre}"']
        if pick < 0.85:  # a user agent
            head = "tcp $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS"
            agent = r.choice(AGENTS) + self.word(3, 6)
            pcre = f"/^User-Agent\\x3a\\x20{regex(agent)}[^\\r\\n]*\\r?$/mi"
            return head, [f'content:"{literal(b"User-Agent: " + agent)}"', f'pcre:"{pcre}"']
        head = "udp $HOME_NET any -> any 53"  # a DNS name with a random-looking label
        name = self.domain()
        pcre = f"/[\\x08-\\x20][a-z0-9]{{8,32}}{regex(name[: name[0] + 1])}/Ri"
        return head, [f'content:"{literal(name)}"', "nocase", f'pcre:"{pcre}"']

    def _header(self) -> tuple[str, list[str]]:
        """Header keywords (flags, dsize, ttl, window, itype) and a content."""
        r, pick = self.rnd, self.rnd.random()
        marker = self.word(6, 12) if r.random() < 0.7 else self.blob(5, 8)
        content = f'content:"{literal(marker)}"'
        if pick < 0.7:
            head = "tcp $EXTERNAL_NET any -> $HOME_NET any"
            opts = [r.choice(("flags:AP", "flags:PA,12", "flags:A+", "flags:AP,CE"))]
            extra = (f"dsize:>{r.randint(20, 400)}", f"ttl:<{r.randint(32, 128)}",
                     f"window:{r.choice((1024, 4096, 5840, 65535))}")  # fmt: skip
            return head, [*opts, *r.sample(extra, r.randint(1, 2)), content]
        if pick < 0.85:
            head = "icmp $EXTERNAL_NET any -> $HOME_NET any"
            opts = [f"itype:{r.choice((0, 8, 13))}", "icode:0", f"dsize:>{len(marker) + 8}"]
            return head, [*opts, content, "depth:64"]
        head = f"udp $EXTERNAL_NET any -> $HOME_NET {r.choice(('any', '53', '123', '161'))}"
        return head, [f"dsize:<{r.randint(len(marker) + 40, 1400)}", f"ttl:>{r.randint(1, 8)}",
                      content]  # fmt: skip

    def _bytes(self) -> tuple[str, list[str]]:
        """A binary marker, then byte_test, byte_jump or isdataat relative to it."""
        r = self.rnd
        head = r.choice(("tcp $EXTERNAL_NET any -> $HOME_NET any", "udp any any -> $HOME_NET any"))
        opts = [f'content:"{literal(self.blob(4, 6))}"', f"depth:{r.randint(8, 32)}"]
        pick = r.random()
        if pick < 0.4:
            opts.append(f"byte_test:2,>,{r.randint(256, 60000)},{r.randint(0, 8)},relative")
            opts.append(f"isdataat:{r.randint(16, 200)},relative")
        elif pick < 0.7:
            opts.append(f"byte_test:1,&,{r.choice((1, 2, 4, 0x80))},{r.randint(0, 4)},relative")
            opts.append(f'content:"{literal(self.blob(2, 4))}"')
            opts += ["distance:0", "within:64"]
        elif pick < 0.85:
            opts.append(f"byte_jump:2,{r.randint(0, 4)},relative,post_offset {r.randint(0, 8)}")
            opts.append(f'content:"{literal(self.blob(3, 4))}"')
            opts += ["distance:0", "within:16"]
        else:
            opts.append("isdataat:!1,relative" if r.random() < 0.5 else "isdataat:512")
        return head, opts

    def _weak(self) -> tuple[str, list[str]]:
        """A common token as the fast pattern, then a rare content: fails late."""
        r = self.rnd
        head = r.choice(("tcp any any -> any $HTTP_PORTS", "tcp any $HTTP_PORTS -> any any"))
        rare = self.word(5, 10)
        opts = [f'content:"{literal(r.choice(COMMON))}"', "fast_pattern"]
        return head, [*opts, f'content:"{literal(rare)}"', "distance:0", "nocase"]


def ruleset(size: int, seed: int, weak: float) -> tuple[list[str], Counter[str]]:
    """`size` rules: the five that fire on the captures, then generated ones."""
    fixed = list(MATCHING[:size])
    gen = RuleGen(seed, weak)
    return fixed + gen.rules(size - len(fixed)), gen.kinds


# -- the captures ----------------------------------------------------------------------


def default_captures() -> list[Path]:
    # Only the plain captures: the sealed evaluation set is not ours to read.
    return [p for p in sorted(TRAFFIC.glob("*.pcap")) if not p.name.startswith(".")]


def load_batches(captures: list[Path], packets: int) -> tuple[Batches, int, dict[str, int]]:
    """The captures looped to at least `packets`, in parsed batches of BATCH. Packet
    times are rewritten to one every SPACING_NS (the files come from different years,
    and the flow table expires by packet time)."""
    frames: list[tuple[int, bytes, int]] = []
    per_file = {}
    for path in captures:
        got = [(p.orig_len, p.data, p.linktype) for p in read_capture(path)]
        per_file[path.name] = len(got)
        frames += got
    if not frames:
        raise SystemExit("no packets in the captures")
    looped = frames * -(-packets // len(frames))
    batches: Batches = []
    for start in range(0, len(looped), BATCH):
        chunk = list(enumerate(looped[start : start + BATCH], start))
        for linktype in dict.fromkeys(lt for _, (*_, lt) in chunk):  # a batch per link type
            rows = [(T0 + n * SPACING_NS, orig, data, 1, n, "")
                    for n, (orig, data, lt) in chunk if lt == linktype]  # fmt: skip
            batch = PacketBatch.from_rows(linktype, rows)
            batches.append((batch, parse_packet_batch(batch)))
    return batches, len(looped), per_file


def advance(batches: Batches, packets: int) -> None:
    """Move every packet time on by one pass, so that time only goes forward."""
    for batch, _ in batches:
        batch.records["ts_ns"] += packets * SPACING_NS


# -- measuring -------------------------------------------------------------------------


class Core:
    """One Ids core and its tables (in memory, kept from pass to pass)."""

    def __init__(self, ids: Ids) -> None:
        self.ids = ids
        self.stores = BatchState.memory(Ids.tables)

    def run(self, batch: PacketBatch, headers: Headers) -> tuple[float, Any]:
        """(seconds in Ids.process, its decisions); the tables written back after."""
        state = BatchState(self.stores)
        t0 = time.perf_counter()
        decisions = self.ids.process(batch, headers, state)
        took = time.perf_counter() - t0
        state.write_back()
        return took, decisions


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(rules: list[str], window: int | None = None) -> tuple[Ids, float, float]:
    """The core of `rules`: (ids, seconds validating the config, seconds building Ids);
    `window`: its stream_window (None: the default)."""
    t0 = time.perf_counter()
    extra = {} if window is None else {"stream_window": window}
    config = IdsConfig.model_validate({"rules": rules, "vars": VARS, **extra})
    t1 = time.perf_counter()
    ids = Ids(config)
    return ids, t1 - t0, time.perf_counter() - t1


def traced(rules: list[str], window: int | None = None) -> dict[str, float]:
    """MiB that tracemalloc sees retained after a build (collected), and at its peak."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ids = build(rules, window)[0]
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del ids
    mib = 1 << 20
    return {"traced_retained_mib": round((current - base) / mib, 2),
            "traced_peak_mib": round((peak - base) / mib, 2)}  # fmt: skip


def one_pass(core: Core, batches: Batches, packets: int) -> tuple[float, int]:
    """(seconds in Ids.process, alert records) over every batch; then time moves on."""
    seconds, alerts = 0.0, 0
    for batch, headers in batches:
        took, decisions = core.run(batch, headers)
        seconds += took
        alerts += len(decisions.records.get("alerts", ()))
    advance(batches, packets)
    return seconds, alerts


class _Counted:
    """A payload program that counts its runs (the untimed counting pass only)."""

    def __init__(self, program: Any, calls: list[int]) -> None:
        self.program, self.calls = program, calls

    def match(self, payload: bytes) -> bool:
        self.calls[0] += 1
        return self.program.match(payload)


def counts(core: Core, batches: Batches, packets: int) -> dict[str, Any]:
    """Alerts, the sids that fired, and payload programs run per packet, on one pass."""
    sids: Counter[int] = Counter()
    for batch, headers in batches:
        sids.update(a["sid"] for a in core.run(batch, headers)[1].records.get("alerts", ()))
    advance(batches, packets)
    out: dict[str, Any] = {"alerts": sum(sids.values()), "sids_fired": dict(sorted(sids.items()))}
    matcher = core.ids.matcher
    programs = getattr(matcher, "_programs", None)  # a private list: may move
    if isinstance(programs, list):
        calls = [0]
        matcher._programs = [p if p is None else _Counted(p, calls) for p in programs]
        try:
            one_pass(core, batches, packets)
        finally:
            matcher._programs = programs
        out["programs_run_per_packet"] = round(calls[0] / packets, 3)
    return out


def timed(
    cores: dict[str, Core], batches: Batches, packets: int, args: argparse.Namespace,
    tick: Callable[[], None],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Best pps per core over --runs rounds that others left quiet (at most
    --max-disturbance of the CPUs; a disturbed round is run again, --runs more times
    at most, and counts only when no round was quiet); every core once per round,
    the order rotated."""
    names = list(cores)
    for name in names:  # warm: first-call costs, caches and the flow table out of the timing
        one_pass(cores[name], batches, packets)
    rounds: list[dict[str, Any]] = []
    while sum(r["quiet"] for r in rounds) < args.runs and len(rounds) < 2 * args.runs:
        shift = len(rounds) % len(names)
        secs = {}
        with LoadWatch() as watch:
            for name in names[shift:] + names[:shift]:
                secs[name] = one_pass(cores[name], batches, packets)[0]
                tick()
        seen = watch.report()
        quiet = seen["others_share"] <= args.max_disturbance
        rounds.append({"quiet": quiet, "disturbance": seen, "seconds": secs})
    kept = [r for r in rounds if r["quiet"]] or rounds
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        out[name] = {
            "pps": round(packets / min(r["seconds"][name] for r in kept)),
            "rounds_pps": [round(packets / r["seconds"][name]) for r in rounds],
        }
    out["_disturbance"] = {
        "rounds_kept": [i for i, r in enumerate(rounds) if r in kept],
        "rounds": [r["disturbance"] for r in rounds],
    }
    return out


def payloads(batches: Batches, limit: int) -> list[tuple[int, bytes]]:
    """(IP protocol, L4 payload) of the first `limit` packets that have one."""
    out: list[tuple[int, bytes]] = []
    for batch, h in batches:
        buf, offsets = batch.payload, batch.offsets
        for i in range(len(h.proto)):
            if len(out) >= limit:
                return out
            if h.version[i] not in (4, 6) or h.l4_off[i] < 0 or h.frag[i] == FRAG_LATER:
                continue
            base, size = offsets[i], offsets[i + 1] - offsets[i]
            try:
                args = (h.version[i], h.proto[i], h.l3_off[i], h.l4_off[i])
                start, end = payload_span(buf, base, size, *args)
            except Exception:  # a bad TCP data offset: the core drops it as malformed
                continue
            if end > start:
                out.append((h.proto[i], buf[start:end]))
    return out


def prefilter(core: Core, found: list[tuple[int, bytes]]) -> dict[str, float] | None:
    """The automaton pass alone (Matcher._found, best of 3) per payload byte."""
    scan = getattr(core.ids.matcher, "_found", None)  # private: may move
    if scan is None or not found:
        return None
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for proto, payload in found:
            scan(payload, proto)
        best = min(best, time.perf_counter() - t0)
    size = sum(len(p) for _, p in found)
    return {"ns_per_byte": round(best * 1e9 / size, 1),
            "us_per_payload": round(best * 1e6 / len(found), 2)}  # fmt: skip


def profile(core: Core, batches: Batches, packets: int, top: int) -> list[dict[str, Any]]:
    """The `top` functions by own time over one pass (cProfile)."""
    prof = cProfile.Profile()
    prof.runcall(one_pass, core, batches, packets)
    stats = pstats.Stats(prof)
    rows = []
    for (path, line, func), (_, calls, own, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if line else path
        rows.append({"function": f"{where}({func})", "calls": calls,
                     "own_s": round(own, 4), "cumulative_s": round(cum, 4)})  # fmt: skip
    total = sum(r["own_s"] for r in rows) or 1.0
    rows.sort(key=lambda r: -r["own_s"])
    for r in rows:
        r["own_share"] = round(r["own_s"] / total, 3)
    return rows[:top]


# -- report ----------------------------------------------------------------------------


def show(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="ids core vs number of rules (Ids.process only, best run)")
    cols = ("rules", "validate s", "build s", "RSS MiB", "traced MiB", "pkt/s", "vs smallest",
            "vs no rules", "alerts/pass", "sids fired", "programs/pkt", "scan ns/B")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    ceiling = report["ceiling"]
    table.add_row("0 (ceiling)", "", "", "", "", f"{ceiling['pps']:,}", "", "1.000", *[""] * 4)
    for size, cell in report["sizes"].items():
        c, m, p, n = cell["compile"], cell["memory"], cell["process"], cell["counts"]
        table.add_row(
            size, f"{c['validate_s']:.3f}", f"{c['build_s']:.3f}", f"{m['rss_growth_mib']:.1f}",
            f"{m.get('traced_retained_mib', 0):.1f}", f"{p['pps']:,}",
            f"{p['ratio_to_smallest']:.3f}", f"{p['ratio_to_ceiling']:.3f}", str(n["alerts"]),
            str(len(n["sids_fired"])), str(n.get("programs_run_per_packet", "")),
            str((n.get("prefilter") or {}).get("ns_per_byte", "")),
        )  # fmt: skip
    console.print(table)
    t = report.get("target")
    if t:
        verdict = "[green]met[/]" if t["met"] else "[red]not met[/]"
        console.print(f"target: {t['largest']} rules at {t['ratio']:.3f} of {t['smallest']} "
                      f"rules' pkt/s (>= {TARGET}): {verdict}")  # fmt: skip
    for row in report.get("profile", [])[:8]:
        console.print(f"  {row['own_share']:6.1%} {row['calls']:>9,} {row['function']}",
                      highlight=False)  # fmt: skip


def compile_sets(
    sizes: list[int], args: argparse.Namespace, console: Console
) -> tuple[dict[str, Core], dict[str, Any], dict[str, Any]]:
    """Per size: the core, its compile time and memory, and the mix generated."""
    cores = {"0": Core(Ids(IdsConfig.model_validate({"rules": [], "vars": VARS})))}
    cells: dict[str, Any] = {}
    mixes: dict[str, Any] = {}
    for size in sizes:
        rules, kinds = ruleset(size, args.seed, args.weak_anchors)
        mixes[str(size)] = dict(kinds) | {"captures_fixed": min(size, len(MATCHING))}
        gc.collect()
        before = rss_bytes()
        ids, validate_s, build_s = build(rules, args.stream_window)
        grew = (rss_bytes() - before) / (1 << 20)
        compiled = len(ids.config.compiled)
        cores[str(size)] = Core(ids)
        total = validate_s + build_s
        cells[str(size)] = {
            "compile": {
                "rules": compiled,
                "validate_s": round(validate_s, 4),
                "build_s": round(build_s, 4),
                "total_s": round(total, 4),
                "us_per_rule": round(1e6 * total / max(compiled, 1), 1),
            },
            "memory": {"rss_growth_mib": round(grew, 1)} | traced(rules, args.stream_window),
        }
        console.print(f"{size:,} rules: compiled in {total:.2f}s, {cells[str(size)]['memory']}")
    return cores, cells, mixes


def measure(
    report: dict[str, Any], cores: dict[str, Core], batches: Batches, packets: int,
    args: argparse.Namespace, console: Console,
) -> None:  # fmt: skip
    """Counts, then the timed rounds, ratios and the target, then the profile."""
    sizes, cells = report["settings"]["sizes"], report["sizes"]
    found = payloads(batches, sum(report["captures"]["files"].values()))
    for size in sizes:
        cells[str(size)]["counts"] = got = counts(cores[str(size)], batches, packets)
        got["prefilter"] = prefilter(cores[str(size)], found)
        console.print(f"{size:,} rules: {got['alerts']:,} alerts per pass, sids "
                      f"{list(got['sids_fired'])}", highlight=False)  # fmt: skip
    if not args.quick:
        report["waited_for_quiet_s"] = wait_quiet(args.max_disturbance, patience=60.0)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("timed passes", total=args.runs * len(cores))
        got = timed(cores, batches, packets, args, lambda: progress.advance(task))
    report["disturbance"] = got.pop("_disturbance")
    report["ceiling"] = ceiling = got["0"]
    smallest = got[str(sizes[0])]["pps"]
    for size in sizes:
        p = cells[str(size)]["process"] = got[str(size)]
        p["ratio_to_smallest"] = round(p["pps"] / smallest, 3)
        p["ratio_to_ceiling"] = round(p["pps"] / ceiling["pps"], 3)
    if len(sizes) > 1:
        ratio = got[str(sizes[-1])]["pps"] / smallest
        report["target"] = {"smallest": sizes[0], "largest": sizes[-1], "ratio": round(ratio, 3),
                            "at_least": TARGET, "met": ratio >= TARGET}  # fmt: skip
    if args.profile_top > 0:
        report["profile_rules"] = sizes[-1]
        report["profile"] = profile(cores[str(sizes[-1])], batches, packets, args.profile_top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="rules per set")
    ap.add_argument("--packets", type=int, default=30_000, help="loop the captures to this")
    ap.add_argument("--runs", type=int, default=3, help="quiet timed rounds; the best is kept")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--weak-anchors", type=float, default=0.005,
        help="share of generated rules whose fast pattern is a common token",
    )  # fmt: skip
    ap.add_argument("--captures", type=Path, nargs="+", default=None)
    ap.add_argument(
        "--stream-window",
        type=int,
        default=None,
        help="the sets' stream_window (default: the function's); 0: no matching across "
        "TCP segments, so no set keeps stream state",
    )
    ap.add_argument("--profile-top", type=int, default=15, help="0: no profile")
    add_disturbance_args(ap, repeats=None, tries=None)
    ap.add_argument("--quick", action="store_true", help="smoke test: 10 and 1000 rules, 1 run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ids_rules.json")
    args = ap.parse_args()
    if args.quick:
        args.packets, args.runs, args.profile_top = 5_000, 1, min(args.profile_top, 5)
    sizes = sorted(set(args.sizes or ((10, 1000) if args.quick else (10, 1000, 10_000))))
    console = Console(stderr=True, width=160)
    started, code = time.perf_counter(), code_state()
    captures = args.captures or default_captures()
    settings = {
        "sizes": sizes, "packets_min": args.packets, "runs": args.runs, "seed": args.seed,
        "weak_anchors": args.weak_anchors, "batch_packets": BATCH, "mix": MIX,
        "packet_spacing_ns": SPACING_NS, "vars": VARS, "quick": args.quick,
        "stream_window": args.stream_window,
    }  # fmt: skip
    report: dict[str, Any] = {
        "benchmark": "ids core: packets/s, compile time and memory vs number of rules",
        "machine": machine(),
        "code": code,
        "settings": settings,
    }
    batches, packets, per_file = load_batches(captures, args.packets)
    report["captures"] = {"files": per_file, "packets": packets, "batches": len(batches)}
    console.print(f"{packets:,} packets in {len(batches)} batches from {len(per_file)} captures")
    cores, report["sizes"], report["rules"] = compile_sets(sizes, args, console)
    measure(report, cores, batches, packets, args, console)
    write_report(report, code, started, args.out)
    show(console, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
