"""Side-by-side relay benchmark: sottovoce against Prosody and ejabberd (each with and
without a message archive) and a raw websockets ceiling, in interleaved rounds.

    nice -n 10 python bench/peers/run.py --rounds 3 [--out summary.md] [--keep]

One command does everything: installs Prosody 0.12 and ejabberd 23.01 from Debian
packages when missing (apt-get, needs root), writes their configurations into a fresh
temporary directory, and runs ROUNDS rounds of, in this order:

  prosody-plain, sottovoce 1:1 + latency, ejabberd-plain, sottovoce room + 1 pair,
  prosody-mam, raw websockets, ejabberd-mam, sottovoce 1:1 + latency again

Every server listens on 127.0.0.1 only, on ports of its own (XMPP --xmpp-port, the
websockets ceiling --ws-port; sottovoce benches pick free ports), is started fresh
for its step (new data, users registered in-band) and stopped after it. Every step is
bounded in time. At the end it prints each system's median (min–max), the ratio
sottovoce/system per round (same round only: the machine is shared) and the load
average at each step, then deletes the temporary directory (unless --keep).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))


from bench.peers import configs, stats  # noqa: E402

PACKAGES = ("prosody", "ejabberd", "lua-event", "lua-dbi-sqlite3", "erlang-p1-sqlite3")
STEP_LIMIT = 300  # seconds for any one client or bench process


class StepFailed(Exception):
    pass


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} {msg}", flush=True)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, up: bool, limit: float) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if port_open(port) == up:
            return True
        time.sleep(0.2)
    return False


def listener_pid(port: int) -> int:
    """Pid of the process listening on 127.0.0.1:port (ss -ltnp)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=10).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",", 1)[0])
    raise StepFailed(f"no process listens on port {port}")


def ensure_packages() -> None:
    if shutil.which("prosody") and shutil.which("ejabberdctl"):
        return
    if os.geteuid() != 0:
        raise SystemExit("run.py: Prosody/ejabberd are missing and installing them needs root "
                         f"(apt-get install {' '.join(PACKAGES)})")
    log("installing " + " ".join(PACKAGES) + " (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                   check=True, timeout=900, env=env)


class Peer:
    """One Prosody or ejabberd instance, fresh data, on 127.0.0.1:port."""

    def __init__(self, system: str, variant: str, base: Path, port: int) -> None:
        self.system, self.variant, self.port = system, variant, port
        self.dir = base / f"{system}-{variant}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def start(self) -> None:
        if port_open(self.port):
            raise StepFailed(f"port {self.port} is already in use")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        out = (self.dir / "stdout.log").open("wb")
        if self.system == "prosody":
            (self.dir / "data").mkdir()
            cfg = self.dir / "prosody.cfg.lua"
            cfg.write_text(configs.prosody_config(self.dir, self.variant, self.port))
            cmd = ["prosody", "--config", str(cfg)]
        else:
            for d in ("logs", "spool"):
                (self.dir / d).mkdir()
            cfg = self.dir / "ejabberd.yml"
            cfg.write_text(configs.ejabberd_config(self.dir, self.variant, self.port))
            ctl = self.dir / "ejabberdctl.cfg"
            ctl.write_text(configs.ejabberdctl_config(self.variant))
            shutil.chown(self.dir, "ejabberd", "ejabberd")
            for p in self.dir.rglob("*"):
                shutil.chown(p, "ejabberd", "ejabberd")
            cmd = ["ejabberdctl", "--config", str(cfg), "--ctl-config", str(ctl),
                   "--logs", str(self.dir / "logs"), "--spool", str(self.dir / "spool"),
                   "foreground"]
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if not wait_port(self.port, True, 90):
            self.stop()
            raise StepFailed(f"{self.system}-{self.variant} did not listen within 90 s "
                             f"(see {self.dir}/stdout.log)")
        self.pid = listener_pid(self.port)
        time.sleep(1.0)

    def stop(self) -> None:
        pids = [p for p in (self.pid, self.proc.pid if self.proc else 0) if p]
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.pid and _alive(self.pid):
            time.sleep(3)
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        if not wait_port(self.port, False, 20):
            raise StepFailed(f"port {self.port} still open after stopping {self.system}")
        self.proc, self.pid = None, 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_json(cmd: list[str], limit: float = STEP_LIMIT) -> list[dict[str, object]]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(f"{Path(cmd[1]).name} timed out after {limit:.0f} s") from exc
    recs = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode or not recs:
        raise StepFailed(f"{' '.join(cmd[1:3])} failed: {(p.stdout + p.stderr)[-400:]}")
    return recs


def run_text(script: str, *args: str) -> str:
    cmd = [sys.executable, str(ROOT / "bench" / script), *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_LIMIT, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(f"{script} timed out after {STEP_LIMIT} s") from exc
    if p.returncode:
        raise StepFailed(f"{script} failed: {(p.stdout + p.stderr)[-400:]}")
    return p.stdout


class Harness:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args, self.base = args, base
        self.table: stats.Table = {}
        self.loads: list[str] = []
        self.failures: list[str] = []
        self.raw = (base / "raw.jsonl").open("a")
        self.sv_runs: dict[int, list[dict[str, float]]] = {}

    def load(self, rnd: int, step: str) -> None:
        one, five, fifteen = os.getloadavg()
        self.loads.append(f"{time.strftime('%H:%M:%S', time.gmtime())} round {rnd} "
                          f"{step:15} {one:.2f} {five:.2f} {fifteen:.2f}")

    def xmpp(self, cmd: list[str], port: int) -> list[dict[str, object]]:
        base = [sys.executable, str(HERE / "xmpp_load.py"), "--port", str(port)]
        return run_json(base + cmd)

    def peer(self, rnd: int, system: str, variant: str) -> None:
        a = self.args
        peer = Peer(system, variant, self.base, a.xmpp_port)
        peer.start()
        try:
            self.xmpp(["register", "--users", str(a.members + 2)], a.xmpp_port)
            label = f"{system}-{variant}"
            if variant == "plain":
                tests = ["--tests", "throughput,latency,fanout", "--n", str(a.xmpp_n)]
            else:  # archive rate is far below 200 msgs/s: a latency figure would be queueing
                tests = ["--tests", "throughput", "--n", str(a.mam_n)]
            recs = self.xmpp(["run", *tests, "--members", str(a.members),
                              "--server-pid", str(peer.pid), "--label", f"{label}/r{rnd}"],
                             a.xmpp_port)
            for r in recs:
                self.raw.write(json.dumps(r) + "\n")
                stats.add_all(self.table, label, rnd, stats.xmpp_values(r))
            log(f"  {label}: " + "; ".join(
                f"{r.get('test')} {r.get('per_s')}/s p99 {r.get('p99_ms')}" for r in recs))
        finally:
            peer.stop()

    def sv_a(self, rnd: int) -> None:
        # --coalesce-writes: a burst of sends per write, as xmpp_load.py writes its stanzas
        out = run_text("relay.py", "--backends", "sqlite", "--only", "1to1", "latency",
                       "--coalesce-writes")
        vals = stats.parse_relay(out)
        self.raw.write(json.dumps({"label": f"sottovoce/r{rnd}", **vals}) + "\n")
        if "tput" not in vals or "p99" not in vals:
            raise StepFailed(f"bench/relay.py printed no figures: {out[-400:]}")
        runs = self.sv_runs.setdefault(rnd, [])
        runs.append(vals)
        tput = {k: v for k, v in vals.items() if k.startswith("tput")}
        lat = {k: v for k, v in vals.items() if k in ("p50", "p99")}
        stats.merge_runs(self.table, stats.SV_TPUT, rnd,
                         [{k: v for k, v in r.items() if k.startswith("tput")} for r in runs])
        stats.merge_runs(self.table, stats.SV, rnd,
                         [{k: v for k, v in r.items() if k in ("p50", "p99")} for r in runs])
        log(f"  sottovoce 1:1 {tput.get('tput', 0):,.0f} msgs/s, latency {lat}")

    def sv_b(self, rnd: int) -> None:
        out = run_text("rooms.py", "--members", str(self.args.members), "--no-sframe")
        room = stats.parse_rooms(out)
        if not room:
            raise StepFailed(f"bench/rooms.py printed no figures: {out[-400:]}")
        stats.add_all(self.table, stats.SV_ROOM, rnd, room)
        out = run_text("relay.py", "--backends", "sqlite", "--only", "1to1", "--coalesce-writes",
                       "--pairs", "1", "--window", "1000")
        one = {k: v for k, v in stats.parse_relay(out).items() if k.startswith("tput")}
        stats.add_all(self.table, stats.SV_TPUT_1, rnd, one)
        self.raw.write(json.dumps({"label": f"sottovoce-b/r{rnd}", **room, **one}) + "\n")
        log(f"  sottovoce room {room.get('fan', 0):,.0f} deliveries/s, 1 pair "
            f"{one.get('tput', 0):,.0f} msgs/s")

    def ws(self, rnd: int) -> None:
        a = self.args
        if port_open(a.ws_port):
            raise StepFailed(f"port {a.ws_port} is already in use")
        script = str(HERE / "ws_ceiling.py")
        # the port probe below is a connection without a handshake: the server logs it
        with (self.base / "ws-server.log").open("ab") as err:
            srv = subprocess.Popen([sys.executable, script, "serve", "--port", str(a.ws_port),
                                    "--max-seconds", "240"], stdout=subprocess.DEVNULL,
                                   stderr=err, start_new_session=True)
        try:
            if not wait_port(a.ws_port, True, 30):
                raise StepFailed("websockets ceiling server did not start")
            common = ["--port", str(a.ws_port), "--server-pid", str(srv.pid)]
            for name, spec in (("ws-echo 4x256", ["echo", "--conns", "4", "--window", "256"]),
                               ("ws-echo 1x1000", ["echo", "--conns", "1", "--window", "1000"]),
                               ("ws-relay 50", ["relay", "--members", str(a.members), "--n",
                                                "2000", "--window", "256"])):
                for r in run_json([sys.executable, script, *spec, *common,
                                   "--label", f"{name}/r{rnd}"], 150):
                    self.raw.write(json.dumps(r) + "\n")
                    stats.add_all(self.table, name, rnd, stats.xmpp_values(r))
                    log(f"  {name}: {r.get('per_s')}/s")
        finally:
            srv.terminate()
            try:
                srv.wait(timeout=10)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait(timeout=10)

    def round(self, rnd: int) -> None:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("prosody-plain", lambda: self.peer(rnd, "prosody", "plain")),
            ("sottovoce-A1", lambda: self.sv_a(rnd)),
            ("ejabberd-plain", lambda: self.peer(rnd, "ejabberd", "plain")),
            ("sottovoce-B", lambda: self.sv_b(rnd)),
            ("prosody-mam", lambda: self.peer(rnd, "prosody", "mam")),
            ("websockets", lambda: self.ws(rnd)),
            ("ejabberd-mam", lambda: self.peer(rnd, "ejabberd", "mam")),
            ("sottovoce-A2", lambda: self.sv_a(rnd)),
        ]
        for name, step in steps:
            self.load(rnd, name)
            log(f"round {rnd}: {name}")
            try:
                step()
            except StepFailed as exc:
                self.failures.append(f"round {rnd} {name}: {exc}")
                log(f"  FAILED: {exc}")
            self.raw.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--xmpp-port", type=int, default=15222)
    p.add_argument("--ws-port", type=int, default=18799)
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--xmpp-n", type=int, default=30000,
                   help="1:1 messages per peer without archive")
    p.add_argument("--mam-n", type=int, default=1000, help="1:1 messages per peer with archive")
    p.add_argument("--out", type=Path, help="also write the summary (markdown) here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--no-install", action="store_true", help="never run apt-get")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if not args.no_install:
        ensure_packages()
    elif not (shutil.which("prosody") and shutil.which("ejabberdctl")):
        raise SystemExit("run.py: prosody and ejabberdctl are not installed")
    if os.geteuid() != 0:
        raise SystemExit("run.py: ejabberd is started through ejabberdctl as its own user, "
                         "which needs root")
    base = Path(tempfile.mkdtemp(prefix="sv-peers-"))
    base.chmod(0o755)  # the ejabberd user must reach its directory
    h = Harness(args, base)
    log(f"working directory {base}; load average {os.getloadavg()}")
    try:
        for rnd in range(1, args.rounds + 1):
            h.round(rnd)
        h.load(args.rounds, "end")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        h.raw.close()
        summary = stats.render(h.table, h.loads)
        if h.failures:
            summary += "\n### failed steps\n\n" + "\n".join(f"    {f}" for f in h.failures) + "\n"
        print(summary)
        if args.out:
            args.out.write_text(summary)
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    raise SystemExit(1 if h.failures else 0)


if __name__ == "__main__":
    main()
