"""Run every benchmark script in ``benchmarks/`` and pass their JSON lines through.

Contract for a benchmark script (``benchmarks/<name>.py``):

* it is runnable as ``python benchmarks/<name>.py [--quick]``;
* ``--quick`` makes a tiny smoke run (seconds to a minute); without it the
  script runs its full benchmark;
* it prints its results to stdout as JSON lines, one JSON object per line
  (anything else it wants to say goes to stderr); it is encouraged to put a
  ``"benchmark"`` field in each object and to end with a summary object;
* it exits with status 0 on success.

Every ``benchmarks/*.py`` is such a script except this runner, ``__init__.py``
and helper modules, whose names start with an underscore (``_common.py``).
Scripts run one after another (never in parallel, so their timings do not
disturb each other), each in its own subprocess with this Python interpreter,
the repository root as working directory and the same ``--quick`` flag.

The runner's stdout carries only JSON lines: every line a script prints to
stdout that parses as JSON is copied through unchanged, in order; any other
stdout line is sent to stderr prefixed with the script's name, as is the
script's stderr. After all scripts, the runner prints one line of its own,
``{"benchmark": "run", "kind": "runner_summary", ...}``, with each script's exit
status, wall time and number of JSON lines. The exit status is 1 if any script
failed (non-zero exit or timeout), else 0.

Usage::

    /tmp/venv/bin/python benchmarks/run.py --quick          # smoke-run everything
    /tmp/venv/bin/python benchmarks/run.py                  # full benchmarks
    /tmp/venv/bin/python benchmarks/run.py --only nuts_vs_numpyro --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def discover(only: list[str] | None = None) -> list[Path]:
    """Benchmark scripts in ``benchmarks/``, sorted by name.

    Skips this file, ``__init__.py`` and helpers (names starting with ``_``).
    ``only``: keep scripts whose stem equals one of these names.
    """
    scripts = [
        p for p in sorted(HERE.glob("*.py"))
        if p.name != Path(__file__).name and not p.name.startswith("_")
    ]
    if only:
        unknown = set(only) - {p.stem for p in scripts}
        if unknown:
            raise SystemExit(f"unknown benchmark(s): {sorted(unknown)}; have {[p.stem for p in scripts]}")
        scripts = [p for p in scripts if p.stem in only]
    return scripts


def _forward_stderr(stream, name: str) -> None:
    for line in stream:
        sys.stderr.write(f"[{name}] {line}")
        sys.stderr.flush()


def run_script(script: Path, quick: bool, timeout: float | None, sink) -> dict:
    """Run one script, copy its JSON lines to stdout (and ``sink``); return its record."""
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    name = script.stem
    print(f"[run] {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    err_thread = threading.Thread(target=_forward_stderr, args=(proc.stderr, name), daemon=True)
    err_thread.start()
    timer = None
    timed_out = threading.Event()
    if timeout:
        def _kill():
            timed_out.set()
            proc.kill()
        timer = threading.Timer(timeout, _kill)
        timer.start()
    n_json = 0
    try:
        for line in proc.stdout:
            text = line.strip()
            if not text:
                continue
            try:
                json.loads(text)
            except json.JSONDecodeError:
                sys.stderr.write(f"[{name}] {line}")
                continue
            n_json += 1
            print(text, flush=True)
            if sink is not None:
                sink.write(text + "\n")
                sink.flush()
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        err_thread.join(timeout=5)
    return {
        "script": script.name, "returncode": rc, "timed_out": timed_out.is_set(),
        "seconds": round(time.perf_counter() - t0, 3), "json_lines": n_json,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run all benchmarks/*.py scripts (see module docstring).")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script (smoke run)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts (file stems)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per script before it is killed")
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    args = parser.parse_args(argv)

    scripts = discover(args.only)
    sink = open(args.out, "w") if args.out else None
    records = []
    try:
        for script in scripts:
            records.append(run_script(script, args.quick, args.timeout, sink))
        summary = {
            "benchmark": "run", "kind": "runner_summary", "quick": args.quick,
            "python": sys.executable, "scripts": records,
            "ok": all(r["returncode"] == 0 and not r["timed_out"] for r in records),
        }
        print(json.dumps(summary), flush=True)
        if sink is not None:
            sink.write(json.dumps(summary) + "\n")
    finally:
        if sink is not None:
            sink.close()
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
