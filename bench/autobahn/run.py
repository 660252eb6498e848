"""RFC 6455 conformance: the Autobahn fuzzing client against uvicorn's stock websocket protocol and gischat's.

    python bench/autobahn/run.py                      # cases 1-7, 9, 10 (see README.md for the time)
    python bench/autobahn/run.py --cases 1,2,5        # some case groups ("1" means "1.*")
    python bench/autobahn/run.py --cases '9.1.*,9.2.1'
    python bench/autobahn/run.py --gischat-rev HEAD   # gischat's class as committed, not the work tree
    python bench/autobahn/run.py --install-only       # only the Python 2.7 toolchain

Both servers run bench/autobahn/echo_app.py through bench/autobahn/serve.py on 127.0.0.1 and a
free port; they differ only in uvicorn's `ws=`: "websockets-sansio" (stock) or gischat's protocol
class, imported by path. Both use uvicorn's stock httptools HTTP protocol. One `wstest -m
fuzzingclient` run tests both, case after case; its reports go to bench/autobahn/reports/ and the
comparison table to stdout and bench/results/autobahn.md.

wstest (autobahntestsuite) runs on Python 2.7 only. When its toolchain is missing it is installed
into bench/autobahn/.py2 (git-ignored): a Python 2.7 interpreter is looked for (--python2, a pyenv
2.7, /usr/bin/python2.7) and, failing that, Debian's python2.7 is installed from the previous
release (bullseye) with apt-get; pip 20.3.4 (the last for Python 2) is fetched from PyPI as a wheel
and run from the wheel to install itself, then requirements-py2.txt (pinned) is installed with
`pip install --user` under PYTHONUSERBASE=bench/autobahn/.py2.

Exit status: 0 when gischat's outcome is as good as stock's on every case, 1 when gischat is worse
on at least one, 2 when the run itself failed.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import html
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY2_DIR = HERE / ".py2"
TOOLCHAIN_STAMP = PY2_DIR / "toolchain.json"
REQUIREMENTS = HERE / "requirements-py2.txt"
REPORTS = HERE / "reports"
RESULTS = REPO / "bench" / "results" / "autobahn.md"

DEFAULT_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
IMPLS = ("stock", "gischat")
GISCHAT_WS_CLASS = "gischat.server.websocket.GuardedWebSocketProtocol"  # as serve.py imports it

# pip 20.3.4 is the last pip that runs on Python 2.7; setuptools 44.0.0 is what autobahntestsuite pins.
PIP_WHEEL_REQ = "pip==20.3.4"
BOOTSTRAP = ["pip==20.3.4", "setuptools==44.0.0", "wheel==0.37.1"]
# The release before bookworm, whose archive still has python2.7 and python2.7-dev.
PREVIOUS_RELEASE = "bullseye"
APT_SOURCE = Path(f"/etc/apt/sources.list.d/{PREVIOUS_RELEASE}-python2.sources")
APT_SOURCES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]

# Autobahn's outcomes, the five asked about first; the rest count as "other".
MAIN_OUTCOMES = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
# Higher is worse. INFORMATIONAL (no verdict) ranks with OK.
RANK = {
    "OK": 0,
    "INFORMATIONAL": 0,
    "NON-STRICT": 1,
    "UNIMPLEMENTED": 2,
    "WRONG CODE": 2,
    "UNCLEAN": 2,
    "NO_CLOSE": 2,
    "FAILED": 3,
    "FAILED BY CLIENT": 3,
    "MISSING": 4,
}


def say(message: str) -> None:
    print(f"[autobahn] {message}", flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run a command, printing it first; raise on a non-zero exit."""
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, env=env, cwd=cwd)


# --- the Python 2.7 toolchain --------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    python2: str
    env: dict[str, str]

    @property
    def wstest(self) -> list[str]:
        return [self.python2, str(PY2_DIR / "bin" / "wstest")]


def py2_env() -> dict[str, str]:
    """The environment of every Python 2.7 command: the user site is bench/autobahn/.py2."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PIP_FIND_LINKS"}  # the last: py3 wheels
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONUSERBASE"] = str(PY2_DIR)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_PYTHON_VERSION_WARNING"] = "1"
    return env


def is_python27(path: str) -> bool:
    try:
        out = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == "2.7"


def find_python2(explicit: str | None) -> str | None:
    """A working Python 2.7 interpreter: --python2, then pyenv's, then the system's."""
    if explicit:
        if not is_python27(explicit):
            raise SystemExit(f"--python2 {explicit} is not a working Python 2.7")
        return explicit
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(f"{pyenv_root}/versions/2.7*/bin/python2.7"), reverse=True)
    candidates += ["/usr/bin/python2.7", "/usr/local/bin/python2.7"]
    # Not `which python2.7`: a pyenv shim is found on PATH even when 2.7 is not selected.
    for path in candidates:
        if is_python27(path):
            return path
    return None


def debian_mirror() -> str:
    """The URI of the Debian archive this system's apt already uses (not its security archive)."""
    for path in APT_SOURCES:
        if path.suffix not in {"", ".list", ".sources"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        uris = re.findall(r"^URIs:\s*(\S+)", text, re.M)  # deb822
        uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)  # one-line style
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return str(uri)
    raise SystemExit("no Debian archive found in /etc/apt: pass --python2 PATH")


def apt_install_python2() -> str:
    """Install Debian's python2.7 (and -dev, for wsaccel's C extension), from bullseye if need be."""
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        raise SystemExit("no Python 2.7 found and this is not a Debian system: pass --python2 PATH")
    if os.geteuid() != 0:
        raise SystemExit(
            "no Python 2.7 found; installing Debian's python2.7 needs root (or pass --python2 PATH)"
        )
    run(["apt-get", "update"])
    policy = subprocess.run(
        ["apt-cache", "policy", "python2.7"], capture_output=True, text=True, check=False
    ).stdout
    if "Candidate:" not in policy or "Candidate: (none)" in policy:
        say(f"python2.7 is not in this release's archive: adding {PREVIOUS_RELEASE}'s in {APT_SOURCE}")
        APT_SOURCE.write_text(
            f"Types: deb\nURIs: {debian_mirror()}\nSuites: {PREVIOUS_RELEASE}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        run(["apt-get", "update"])
    run(["apt-get", "install", "-y", "--no-install-recommends", "python2.7", "python2.7-dev"])
    if not is_python27("/usr/bin/python2.7"):
        raise SystemExit("apt-get installed python2.7 but /usr/bin/python2.7 does not run")
    return "/usr/bin/python2.7"


def requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def toolchain_ready() -> Toolchain | None:
    """The installed toolchain, when the stamp matches requirements-py2.txt and wstest imports."""
    try:
        stamp = json.loads(TOOLCHAIN_STAMP.read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("requirements") != requirements_digest() or not (PY2_DIR / "bin" / "wstest").exists():
        return None
    tool = Toolchain(stamp["python2"], py2_env())
    check = subprocess.run(
        [tool.python2, "-c", "import autobahntestsuite.wstest, autobahn.websocket.protocol"],
        env=tool.env,
        capture_output=True,
        check=False,
    )
    return tool if check.returncode == 0 else None


def install_toolchain(python2: str | None) -> Toolchain:
    say("installing the Python 2.7 toolchain for wstest into " + str(PY2_DIR))
    interpreter = find_python2(python2)
    if interpreter is None:
        say("no Python 2.7 interpreter found: installing Debian's python2.7 with apt-get")
        interpreter = apt_install_python2()
    say(f"Python 2.7: {interpreter}")
    if PY2_DIR.exists():
        shutil.rmtree(PY2_DIR)
    wheels = PY2_DIR / "wheels"
    wheels.mkdir(parents=True)
    # Debian's python2.7 has no ensurepip: take pip's py2.py3 wheel from PyPI with this Python's pip.
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            PIP_WHEEL_REQ,
        ]
    )
    (wheel,) = wheels.glob("pip-*.whl")
    env = py2_env()
    # pip runs from its own wheel to install itself (it cannot build sdists from there).
    run(
        [interpreter, str(wheel / "pip"), "install", "--user", "--no-warn-script-location", *BOOTSTRAP],
        env=env,
    )
    run(
        [interpreter, "-m", "pip", "install", "--user", "--no-warn-script-location", "-r", str(REQUIREMENTS)],
        env=env,
    )
    TOOLCHAIN_STAMP.write_text(
        json.dumps({"python2": interpreter, "requirements": requirements_digest()}) + "\n"
    )
    tool = toolchain_ready()
    if tool is None:
        raise SystemExit("the toolchain was installed but wstest does not import")
    version = subprocess.run([*tool.wstest, "-a"], env=tool.env, capture_output=True, text=True, check=False)
    say("installed: " + " ".join(version.stdout.split()))
    return tool


def ensure_toolchain(python2: str | None, allow_install: bool) -> Toolchain:
    tool = toolchain_ready()
    if tool is not None and (python2 is None or python2 == tool.python2):
        return tool
    if not allow_install:
        raise SystemExit(f"the wstest toolchain is missing from {PY2_DIR} (run without --no-install)")
    return install_toolchain(python2)


# --- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(
        f"server on port {port} did not listen within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


@dataclass
class Server:
    impl: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    logfile: IO[bytes]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()


def start_server(impl: str, outdir: Path, gischat_src: Path | None) -> Server:
    port = free_port()
    log = outdir / f"server-{impl}.log"
    logfile = log.open("wb")
    cmd = [sys.executable, "-m", "bench.autobahn.serve", "--impl", impl, "--port", str(port)]
    if impl == "gischat" and gischat_src is not None:
        cmd += ["--gischat-src", str(gischat_src)]
    say("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=logfile, stderr=subprocess.STDOUT)
    server = Server(impl, port, proc, log, logfile)
    try:
        wait_listening(proc, port, log)
    except BaseException:
        server.stop()
        raise
    say(log.read_text().splitlines()[0] if log.read_text() else f"{impl} listening on {port}")
    return server


def export_gischat(rev: str, dest_root: Path) -> Path:
    """`git archive REV gischat` into dest_root/REV; returns the directory holding the package."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dest = dest_root / sha
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", sha, "gischat"], cwd=REPO, capture_output=True, check=True
    ).stdout
    tar_path = dest / "gischat.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    tar_path.unlink()
    say(f"gischat at {rev} ({sha}) exported to {dest}")
    return dest


# --- wstest ------------------------------------------------------------------------------------


def expand_cases(arg: str | None) -> list[str]:
    if not arg:
        return list(DEFAULT_CASES)
    cases = []
    for item in (part.strip() for part in arg.split(",")):
        if item:
            cases.append(f"{item}.*" if re.fullmatch(r"\d+", item) else item)
    return cases


def run_wstest(
    tool: Toolchain, servers: list[Server], cases: list[str], report_dir: Path, timeout: float
) -> float:
    """Run the fuzzing client against every server, reports into report_dir; returns its wall time (s)."""
    if report_dir.exists():
        shutil.rmtree(report_dir)
    report_dir.mkdir(parents=True)
    spec = {
        "outdir": str(report_dir),
        "servers": [{"agent": s.impl, "url": s.url} for s in servers],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_path = report_dir / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    log = report_dir / "wstest.log"
    cmd = [*tool.wstest, "-m", "fuzzingclient", "-s", str(spec_path)]
    say("$ " + " ".join(cmd) + f"  (output: {log})")
    start = time.monotonic()
    with log.open("wb") as logfile:
        proc = subprocess.Popen(cmd, cwd=report_dir, env=tool.env, stdout=logfile, stderr=subprocess.STDOUT)
        last = start
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if now - start > timeout:
                proc.kill()
                proc.wait()
                raise SystemExit(f"wstest did not finish within {timeout:.0f} s; see {log}")
            if now - last >= 30:
                last = now
                done = log.read_text(errors="replace").count("Running test case ID")
                say(f"... {now - start:.0f} s, {done} case runs started")
    elapsed = time.monotonic() - start
    for server in servers:
        if server.proc.poll() is not None:
            raise SystemExit(
                f"the {server.impl} server exited during the run ({server.proc.returncode}): {server.log}"
            )
    if proc.returncode != 0 or not (report_dir / "index.json").exists():
        raise SystemExit(f"wstest failed ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
    return elapsed


# --- the comparison ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    behavior: str
    close: str
    duration_ms: int
    remote_close: int | None
    report: Path | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.behavior, self.close)

    @property
    def rank(self) -> tuple[int, int]:
        return (RANK.get(self.behavior, 3), RANK.get(self.close, 3))


MISSING = Outcome("MISSING", "MISSING", 0, None, None)
# Per server, per case: the outcome of every round (the full run, then the rechecks).
Rounds = dict[str, dict[str, list[Outcome]]]


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def load_index(report_dir: Path) -> dict[str, dict[str, Outcome]]:
    raw = json.loads((report_dir / "index.json").read_text())
    return {
        agent: {
            case: Outcome(
                r.get("behavior", "MISSING"),
                r.get("behaviorClose", "MISSING"),
                int(r.get("duration") or 0),
                r.get("remoteCloseCode"),
                report_dir / r["reportfile"] if r.get("reportfile") else None,
            )
            for case, r in cases.items()
        }
        for agent, cases in raw.items()
    }


def outcomes(rounds: Rounds, impl: str, case: str) -> list[Outcome]:
    return rounds.get(impl, {}).get(case) or [MISSING]


def differs(rounds: Rounds, case: str) -> bool:
    """Did the two servers ever have different outcomes on this case?"""
    a = {o.key for o in outcomes(rounds, "stock", case)}
    b = {o.key for o in outcomes(rounds, "gischat", case)}
    return a != b or len(a) > 1


def worse(rounds: Rounds, case: str) -> bool:
    """Is gischat worse than stock on this case, in every round against every round?

    Some cases race (4.1.5 and 4.2.5: is the text message sent before the bad frame echoed before
    the connection fails?), so one round says little: gischat is worse only when even its best
    round is worse than stock's worst (behavior first, then close behavior).
    """
    best_gischat = min(o.rank for o in outcomes(rounds, "gischat", case))
    worst_stock = max(o.rank for o in outcomes(rounds, "stock", case))
    return best_gischat > worst_stock


def description(outcome: Outcome) -> str:
    if outcome.report is None:
        return ""
    try:
        text = json.loads(outcome.report.read_text()).get("description", "")
    except (OSError, ValueError):
        return ""
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= 110 else text[:107] + "..."


def cell(results: list[Outcome]) -> str:
    """'OK / OK, close 1000' for one round; 'OK / OK, close 1002 x3; NON-STRICT / OK, close 1002 x1' for several."""
    counts = Counter(
        f"{o.behavior} / {o.close}" + (f", close {o.remote_close}" if o.remote_close is not None else "")
        for o in results
    )
    if len(results) == 1:
        return next(iter(counts))
    return "; ".join(f"{text} x{n}" for text, n in counts.most_common())


def versions() -> str:
    parts = []
    for name in ("uvicorn", "websockets", "httptools", "uvloop"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)


def gischat_source(rev: str | None, src: Path | None) -> str:
    if rev is not None:
        return f"git revision `{rev}`"
    if src is not None:
        return str(src)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "gischat"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return f"the work tree at {head.stdout.strip()}" + (
        " (gischat/ has uncommitted changes)" if dirty else ""
    )


def compare(
    rounds: Rounds, cases: list[str], wall_s: float, rechecks: int, header: list[str]
) -> tuple[str, list[str]]:
    """The markdown report, and the cases on which gischat did worse than stock."""
    first: dict[str, dict[str, Outcome]] = {
        impl: {c: results[0] for c, results in rounds.get(impl, {}).items()} for impl in IMPLS
    }
    all_cases = sorted(set(first["stock"]) | set(first["gischat"]), key=case_key)
    groups: dict[str, list[str]] = defaultdict(list)
    for case in all_cases:
        groups[case.split(".")[0]].append(case)
    seen = {o.behavior for results in first.values() for o in results.values()}
    others = sorted(seen - set(MAIN_OUTCOMES), key=lambda b: (RANK.get(b, 3), b))
    cols = MAIN_OUTCOMES + others
    lines = [
        "# Autobahn fuzzing client: uvicorn's stock websockets-sansio protocol vs gischat's",
        "",
        f"Cases {', '.join(cases)}: {len(all_cases)} per server; the full run took {wall_s:.0f} s of wstest.",
        *header,
        "",
        "Outcomes per case group in the full run (Autobahn's `behavior`; time = sum of the case durations):",
        "",
        "| group | server | cases | " + " | ".join(cols) + " | time (s) |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: |",
    ]
    totals: dict[str, Counter[str]] = {impl: Counter() for impl in IMPLS}
    total_ms: Counter[str] = Counter()
    for group, members in sorted(groups.items(), key=lambda kv: int(kv[0])):
        for impl in IMPLS:
            results = [first[impl].get(c, MISSING) for c in members]
            counts = Counter(o.behavior for o in results)
            ms = sum(o.duration_ms for o in results)
            totals[impl].update(counts)
            total_ms[impl] += ms
            row = " | ".join(str(counts.get(col, 0)) for col in cols)
            lines.append(f"| {group} | {impl} | {len(members)} | {row} | {ms / 1000:.2f} |")
    for impl in IMPLS:
        row = " | ".join(str(totals[impl].get(col, 0)) for col in cols)
        lines.append(f"| **all** | {impl} | {len(all_cases)} | {row} | {total_ms[impl] / 1000:.2f} |")

    diffs = [c for c in all_cases if differs(rounds, c)]
    worse_cases = [c for c in all_cases if worse(rounds, c)]
    lines += [
        "",
        f"Cases whose outcome differs between the servers or between rounds: {len(diffs)}"
        + (
            f" (behavior / close behavior, close code sent by the server; each was run {rechecks} more "
            "time(s) against both servers, and every round is counted here):"
            if diffs
            else "."
        ),
    ]
    if diffs:
        lines += [
            "",
            "| case | stock | gischat | gischat worse? | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for case in diffs:
            s, g = outcomes(rounds, "stock", case), outcomes(rounds, "gischat", case)
            racy = len({o.key for o in s}) > 1 or len({o.key for o in g}) > 1
            verdict = "**yes**" if case in worse_cases else ("no (racy)" if racy else "no")
            lines.append(f"| {case} | {cell(s)} | {cell(g)} | {verdict} | {description(s[0])} |")
    same = [c for c in all_cases if c not in diffs and outcomes(rounds, "stock", c)[0].key != ("OK", "OK")]
    lines += ["", f"Cases with the same outcome on both servers, other than OK / OK: {len(same)}"]
    if same:
        lines += ["", "| case | both servers | description |", "| --- | --- | --- |"]
        for case in same:
            s = outcomes(rounds, "stock", case)
            lines.append(f"| {case} | {cell(s[:1])} | {description(s[0])} |")
    lines += [
        "",
        f"Verdict: gischat is worse than stock on {len(worse_cases)} case(s)"
        + (f": {', '.join(worse_cases)}." if worse_cases else ".")
        + " (worse = gischat's best round is worse than stock's worst round on that case.)",
    ]
    return "\n".join(lines) + "\n", worse_cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", help="comma-separated case patterns; a bare number N means N.* (default: 1-7,9,10)"
    )
    parser.add_argument("--rechecks", type=int, default=3, help="reruns of the cases that differ (default 3)")
    parser.add_argument(
        "--install-only", action="store_true", help="install the Python 2.7 toolchain and stop"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="fail instead of installing a missing toolchain"
    )
    parser.add_argument("--python2", help="the Python 2.7 interpreter to install wstest for")
    parser.add_argument(
        "--gischat-src", type=Path, help="import gischat from this directory (holding gischat/)"
    )
    parser.add_argument(
        "--gischat-rev", help="import gischat as committed at this git revision (git archive)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds one wstest run may take (default 3600)"
    )
    parser.add_argument(
        "--outdir", type=Path, default=REPORTS, help="reports and logs (default bench/autobahn/reports)"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="the markdown table (bench/results/autobahn.md)"
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    tool = ensure_toolchain(args.python2, allow_install=not args.no_install)
    say(f"toolchain ready: {tool.python2} with PYTHONUSERBASE={PY2_DIR}")
    if args.install_only:
        return 0
    version = subprocess.run([*tool.wstest, "-a"], env=tool.env, capture_output=True, text=True, check=False)
    wstest_version = " ".join(version.stdout.split()) or "wstest"

    outdir: Path = args.outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    cases = expand_cases(args.cases)
    rounds: Rounds = {impl: {} for impl in IMPLS}
    servers: list[Server] = []
    # An exported revision lives outside the repository (mypy and ruff would find it under bench/).
    with tempfile.TemporaryDirectory(prefix="autobahn-gischat-") as tmp:
        gischat_src: Path | None = args.gischat_src.resolve() if args.gischat_src else None
        if args.gischat_rev:
            gischat_src = export_gischat(args.gischat_rev, Path(tmp))
        try:
            for impl in IMPLS:
                servers.append(start_server(impl, outdir, gischat_src))
            wall = run_wstest(tool, servers, cases, outdir / "servers", args.timeout)
            for impl, results in load_index(outdir / "servers").items():
                for case, outcome in results.items():
                    rounds.setdefault(impl, {}).setdefault(case, []).append(outcome)
            recheck = sorted((c for c in rounds["stock"] if differs(rounds, c)), key=case_key)
            for n in range(1, args.rechecks + 1) if recheck else ():
                say(f"recheck {n}/{args.rechecks}: {', '.join(recheck)}")
                run_wstest(tool, servers, recheck, outdir / f"recheck-{n}", args.timeout)
                for impl, results in load_index(outdir / f"recheck-{n}").items():
                    for case, outcome in results.items():
                        rounds.setdefault(impl, {}).setdefault(case, []).append(outcome)
        finally:
            for server in servers:
                server.stop()
    for server in servers:
        tracebacks = server.log.read_text(errors="replace").count("Traceback")
        if tracebacks:
            say(f"note: {server.log} holds {tracebacks} traceback(s)")

    shown = outdir.relative_to(REPO) if outdir.is_relative_to(REPO) else outdir
    header = [
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} with {wstest_version}; servers on "
        f"Python {platform.python_version()}, {versions()}.",
        "Both servers: bench/autobahn/echo_app.py via bench/autobahn/serve.py, uvicorn's stock httptools HTTP "
        'protocol, ws_max_size 16 MiB, uvicorn\'s default ping settings; stock = `ws="websockets-sansio"`, '
        f"gischat = `{GISCHAT_WS_CLASS}` from {gischat_source(args.gischat_rev, gischat_src)}.",
        f"Per-case reports: {shown}/servers/index.html; server logs: {shown}/server-*.log.",
    ]
    report, worse_cases = compare(rounds, cases, wall, args.rechecks, header)
    print()
    print(report)
    results_path: Path = args.results
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(report)
    say(f"wrote {results_path}; whole run {time.monotonic() - started:.0f} s (full wstest run {wall:.0f} s)")
    return 1 if worse_cases else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"[autobahn] command failed ({exc.returncode}): {exc.cmd}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(f"[autobahn] {exc.code}", file=sys.stderr)
            sys.exit(2)
        raise
