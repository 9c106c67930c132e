#!/usr/bin/env python3
"""The summary.txt of scripts/gpu_checks.sh, from its work folder.

    python3 scripts/gpu_summary.py WORK_DIR TOTAL_SECONDS > summary.txt

WORK_DIR holds machine.txt, steps.tsv (one line per step: stage, step, status, seconds,
limit, log, command), stages.tsv, the step logs and each step's files (STAGE-STEP/). The
summary names the machine, then per step its status, time, counts and first failure
messages (test, case and error as the logs give them), then the bench table. Only the
standard library: it runs on the GPU machine and in CI alike.
"""

import csv
import json
import re
import sys
from pathlib import Path

FAILURES_PER_STEP = 5
LINE_WIDTH = 300
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LIBTEST = re.compile(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored")
CLI_COUNTS = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?")
SANITIZER = re.compile(r"ERROR SUMMARY: (\d+) error")
SECTION = re.compile(r"^---- (\S+) std(?:out|err) ----")
# Bench table: implementations in column order, with short headers.
BENCH_COLUMNS = [("copy", "copy"), ("warpnorm", "warpnorm"), ("torch", "eager"),
                 ("torch_compile", "compile"), ("triton", "triton"), ("liger", "liger"),
                 ("flax", "flax")]


def clean(line):
    return ANSI.sub("", line).rstrip()


def clip(text):
    return text if len(text) <= LINE_WIDTH else text[:LINE_WIDTH - 3] + "..."


def counts(lines):
    """'N passed, M failed, ...' summed over the test binaries, CLI summaries and sanitizer
    reports a log holds; empty when it holds none."""
    passed = failed = ignored = skipped = 0
    found = set()
    errors = None
    for line in lines:
        m = LIBTEST.search(line)
        if m:
            found.add("tests")
            passed, failed, ignored = (passed + int(m[1]), failed + int(m[2]),
                                       ignored + int(m[3]))
            continue
        m = CLI_COUNTS.match(line)
        if m:
            found.add("cli")
            passed, failed = passed + int(m[1]), failed + int(m[2])
            skipped += int(m[3] or 0)
            continue
        m = SANITIZER.search(line)
        if m:
            errors = (errors or 0) + int(m[1])
    parts = []
    if found:
        parts.append(f"{passed} passed, {failed} failed")
        if ignored:
            parts.append(f"{ignored} ignored")
        if skipped:
            parts.append(f"{skipped} skipped")
    # libtest may print a test's SKIP line after its "test name ... ", on the same line.
    skips = sum("SKIP:" in line for line in lines)
    if skips:
        parts.append(f"{skips} SKIP lines")
    if errors is not None:
        parts.append(f"{errors} sanitizer errors")
    return ", ".join(parts)


def failures(lines):
    """The first failure messages, each with the test it came from when the log says."""
    out, test = [], None
    for i, line in enumerate(lines):
        m = SECTION.match(line)
        if m:
            test = m[1]
            continue
        where = f"{test}: " if test else ""
        if line.startswith("FAIL"):
            out.append(where + line)
        elif "panicked at" in line:
            # The message is on the next line (the location is on this one).
            message = lines[i + 1] if i + 1 < len(lines) else ""
            at = line.split("panicked at", 1)[1].strip().rstrip(":")
            out.append(f"{where}panicked: {message} ({at})")
        elif line.startswith("========= ") and re.search(r"(Invalid|Race|error|Barrier|Uninit)",
                                                         line, re.I) \
                and "ERROR SUMMARY: 0 errors" not in line:
            out.append(where + line.removeprefix("========= "))
        elif line.startswith("Traceback") or re.match(r"^\w*(Error|Exception): ", line):
            out.append(where + line)
        if len(out) >= FAILURES_PER_STEP:
            break
    return [clip(f) for f in out]


def step_lines(work, row):
    """The lines of a step's log and of the logs among its own files."""
    logs = [work / row["log"]] if row["log"] else []
    own = work / f"{row['stage']}-{row['step']}"
    if own.is_dir():
        logs += sorted(own.glob("*.log"))
    lines = []
    for log in logs:
        try:
            lines += [clean(x) for x in log.read_text(errors="replace").splitlines()]
        except OSError:
            pass
    return lines


def bench_results(work, row):
    """compare.py's results.json of a bench step, or None."""
    try:
        return json.loads((work / f"{row['stage']}-{row['step']}" / "results.json").read_text())
    except (OSError, ValueError):
        return None


def bench_tables(work, rows):
    out = []
    for row in rows:
        data = bench_results(work, row)
        if data is None:
            continue
        idx = {(r["impl"], r["dtype"], r["cols"], r["pass"]): r["gbps"]
               for r in data.get("records", []) if "gbps" in r}
        impls = [(i, h) for i, h in BENCH_COLUMNS if any(k[0] == i for k in idx)]
        title = f"{row['stage']}/{row['step']}: {data.get('norm', 'layer_norm')}, GB/s"
        if data.get("synthetic"):
            title += " (SYNTHETIC: dry-run numbers, nothing measured)"
        out += ["", title]
        head = ["dtype", "pass", "D"] + [h for _, h in impls] + ["wn %copy"]
        table = [head]
        passes = ["fwd", "bwd", "fwd_bwd"]
        keys = sorted({(k[1], k[3], k[2]) for k in idx if k[3] in passes},
                      key=lambda k: (k[0], passes.index(k[1]), k[2]))
        for dtype, pss, cols in keys:
            cells = [dtype, pss, str(cols)]
            for impl, _ in impls:
                gbps = idx.get((impl, dtype, cols, "copy" if impl == "copy" else pss))
                cells.append(f"{gbps:.0f}" if gbps else "-")
            wn, top = idx.get(("warpnorm", dtype, cols, pss)), idx.get(("copy", dtype, cols, "copy"))
            cells.append(f"{100 * wn / top:.0f}%" if wn and top else "-")
            table.append(cells)
        widths = [max(len(r[c]) for r in table) for c in range(len(head))]
        out += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in table]
        notes = [n for n in data.get("notes", []) if not n.startswith("partial:")]
        if any(n.startswith("partial:") for n in data.get("notes", [])):
            notes.insert(0, "stopped before it finished: shapes it did not reach are missing")
        out += [clip(f"  note: {n}") for n in notes[:6]]
    return out


def main():
    work, total = Path(sys.argv[1]), sys.argv[2]
    out = ["warpnorm GPU checks"]
    out += (work / "machine.txt").read_text().splitlines()
    with open(work / "steps.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    stages = []
    if (work / "stages.tsv").exists():
        stages = [line.split("\t") for line in (work / "stages.tsv").read_text().splitlines()]
    out.append(f"total: {total} s")
    for _, stage, budget, took in stages:
        out.append(f"stage {stage}: {took} s of a {budget} s budget")
    tally = {}
    for r in rows:
        tally[r["status"]] = tally.get(r["status"], 0) + 1
    out.append("steps: " + ", ".join(f"{n} {s}" for s, n in tally.items()))
    out += ["", "steps (status, seconds used / allowed, counts):"]
    first = []
    for r in rows:
        lines = step_lines(work, r)
        c = counts(lines) if r["status"] != "listed" else "dry run: " + clip(r["command"])
        data = bench_results(work, r)
        if data is not None:
            c = f"{len(data.get('records', []))} records, {len(data.get('notes', []))} notes"
        out.append(f"  {r['stage'] + '/' + r['step']:<28} {r['status']:<9} "
                   f"{r['seconds']:>4}/{r['limit']:<4} {c}".rstrip())
        if r["status"] in ("failed", "timed out"):
            found = failures(lines)
            if not found and lines:
                found = ["(no failure message found; the log ends:) " + clip(lines[-1])]
            first.append((r, found))
    if first:
        out += ["", "first failures:"]
        for r, found in first:
            out.append(f"  {r['stage']}/{r['step']} ({r['status']}, log {r['log']}):")
            out += [f"    {f}" for f in found]
    bench = bench_tables(work, rows)
    if bench:
        out += ["", "bench:"] + bench
    out += ["", "logs and reports: results.tar.gz"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
