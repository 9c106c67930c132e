#!/usr/bin/env python3
"""Times warpnorm's LayerNorm against PyTorch, torch.compile, Triton, Liger, flax and a copy.

One command on a GPU machine:

    python3 bench/compare.py --warpnorm target/release/warpnorm

For every dtype (f32, f16, bf16) and row length D, on about 256 MiB of activations
(rows = bytes / (D * element size)), it times the forward and forward + backward of:

  warpnorm        the `warpnorm bench --json` CLI (its own CUDA-event timings)
  torch           PyTorch F.layer_norm, eager
  torch_compile   torch.compile of the same function
  triton          a Triton LayerNorm in the tutorial's style (bench/triton_ln.py)
  liger           Liger-Kernel's Triton LayerNorm / RMSNorm (the `liger-kernel` package)
  flax            flax.linen.LayerNorm under jax.jit (forward + backward via jax.vjp)
  copy            a device-to-device copy of x: the bandwidth ceiling

and writes a markdown report, results.json and a plot to bench/results/<date>-<device>/.
GB/s counts the bytes a LayerNorm must move (see bench/README.md), the same for every
implementation. Each implementation is optional: one that cannot be imported is skipped
with a note.

`--dry-run` needs only the Python standard library: it checks the argument parsing, the
shape list and the byte accounting, and renders the report and plot from synthetic numbers
into a temporary folder (or --out).
"""

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_COLS = [128, 256, 512, 768, 1024, 2048, 4096, 5120, 8192, 12288, 16384, 32768, 65536]
DTYPES = {"f32": 4, "f16": 2, "bf16": 2}
PASSES = ["fwd", "fwd_bwd"]
IMPLS = ["warpnorm", "torch", "torch_compile", "triton", "liger", "flax", "copy"]
ANCHORS = ["torch", "torch_compile", "triton", "liger", "flax"]
NORMS = {"layer_norm": "LayerNorm", "rms_norm": "RMSNorm"}
# Short names for table headers.
SHORT = {"warpnorm": "warpnorm", "torch": "eager", "torch_compile": "compile",
         "triton": "Triton", "liger": "Liger", "flax": "flax"}
LABELS = {
    "warpnorm": "warpnorm",
    "torch": "PyTorch eager",
    "torch_compile": "torch.compile",
    "triton": "Triton (tutorial style)",
    "liger": "Liger-Kernel",
    "flax": "flax (jax.jit)",
    "copy": "copy (ceiling)",
}
COLORS = {
    "warpnorm": "#d62728",
    "torch": "#1f77b4",
    "torch_compile": "#2ca02c",
    "triton": "#9467bd",
    "liger": "#8c564b",
    "flax": "#ff7f0e",
    "copy": "#7f7f7f",
}
# Rotated buffers touch at least this much (and 8x the L2) before a set is reused.
MIN_ROTATION_FOOTPRINT = 512 << 20
MAX_SETS = 64
EPS = 1e-5
WARPNORM_FIELDS = ("impl", "dtype", "cols", "rows", "pass", "ms", "gbps")
NUMPY_NAMES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


# ---------------------------------------------------------------------------------------
# Sizes, shapes and byte accounting (the same rules as warpnorm::bench)

def parse_bytes(text):
    """`256MiB`, `1GiB`, `100MB`, `4096`: KiB/MiB/GiB (or K/M/G) are powers of 1024."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    if not m or m.group(2).lower() not in units:
        raise ValueError(f"cannot read {text!r} as a size (e.g. 256MiB, 1GiB, 100MB)")
    value = int(float(m.group(1)) * units[m.group(2).lower()])
    if value < 1:
        raise ValueError(f"size {text!r} must be at least one byte")
    return value


def parse_list(text, allowed=None, kind=str):
    items = [kind(t.strip()) for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("empty list")
    if allowed is not None:
        bad = [i for i in items if i not in allowed]
        if bad:
            raise ValueError(f"unknown {', '.join(map(str, bad))} (choose from {', '.join(allowed)})")
    return items


def positive_ints(text):
    values = parse_list(text, kind=int)
    if any(v < 1 for v in values):
        raise ValueError("row lengths must be >= 1")
    return values


def rows_for_bytes(cols, dtype, nbytes):
    """Rows of `cols` elements of `dtype` that fit in `nbytes` (at least 1)."""
    return max(1, nbytes // (cols * DTYPES[dtype]))


def bytes_moved(dtype, rows, cols, pss, param_dtype=None, norm="layer_norm"):
    """Bytes a LayerNorm must move (see bench/README.md): forward reads x, scale, bias and
    writes y, mean, rstd (f32 per row); backward reads x, dy, scale, mean, rstd and writes
    dx, dscale, dbias; fwd_bwd is both; copy reads x and writes as much. RMSNorm has no
    bias (nor dbias) and saves only rstd."""
    act = rows * cols * DTYPES[dtype]
    rms = norm == "rms_norm"
    stats = (1 if rms else 2) * 4 * rows
    param = cols * DTYPES[param_dtype or dtype]
    params = (1 if rms else 2) * param
    fwd = act + params + act + stats
    bwd = 2 * act + param + stats + act + params
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd, "copy": 2 * act}[pss]


def gbps(nbytes, ms):
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else 0.0


def rotation_sets(touched, footprint, alloc_per_set, budget):
    """Buffer sets to rotate through: enough to touch `footprint` bytes, at least 2, at most
    64, no more than fit in `budget` (0 when none fits)."""
    want = min(MAX_SETS, max(2, -(-footprint // max(1, touched))))
    return int(min(want, budget // max(1, alloc_per_set)))


def median(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def make_record(impl, dtype, cols, rows, pss, times_ms, timing, sets, norm, note=None):
    ms = median(times_ms)
    nbytes = bytes_moved(dtype, rows, cols, pss, norm=norm)
    rec = {"impl": impl, "norm": norm, "dtype": dtype, "cols": cols, "rows": rows, "pass": pss,
           "bytes": nbytes, "ms": ms, "ms_min": min(times_ms), "ms_max": max(times_ms),
           "iters": len(times_ms), "gbps": gbps(nbytes, ms), "timing": timing, "sets": sets}
    if note:
        rec["note"] = note
    return rec


# ---------------------------------------------------------------------------------------
# Command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Compare warpnorm's LayerNorm with PyTorch, torch.compile, Triton, "
                    "Liger-Kernel, flax and a device-to-device copy on this GPU.")
    p.add_argument("--warpnorm", metavar="PATH",
                   help="the warpnorm CLI binary (built with cargo build --release --bin warpnorm)")
    p.add_argument("--commit", help="warpnorm git commit (default: from `warpnorm info`, else git)")
    p.add_argument("--dtypes", default="f32,f16,bf16", help="comma list of f32, f16, bf16")
    p.add_argument("--cols", default=",".join(map(str, DEFAULT_COLS)),
                   help="comma list of row lengths D")
    p.add_argument("--bytes", default="256MiB", help="size of x per problem (default 256MiB)")
    p.add_argument("--passes", default=",".join(PASSES), help="comma list of fwd, fwd_bwd")
    p.add_argument("--norm", choices=list(NORMS), default="layer_norm",
                   help="layer_norm (default) or rms_norm (flax RMSNorm, torch F.rms_norm; "
                        "no Triton anchor)")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma list of " + ", ".join(IMPLS))
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations (default 10)")
    p.add_argument("--iters", type=int, default=100, help="timed iterations (default 100)")
    p.add_argument("--warpnorm-args", default="",
                   help="extra arguments for `warpnorm bench`, one string split on spaces; "
                        "write it --warpnorm-args=\"--iters 200\" (with '=') since it starts with --")
    p.add_argument("--out", help="results folder (default bench/results/<date>-<device>/)")
    p.add_argument("--plot", choices=["auto", "png", "svg"], default="auto",
                   help="auto: PNG with matplotlib when installed, else SVG")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="start nothing new after this many seconds (warpnorm is run once per "
                        "dtype, the anchors once per shape); what is left is named in the "
                        "report. For machines lent by the call: pair with --merge")
    p.add_argument("--merge", nargs="+", metavar="RESULTS",
                   help="measure nothing: combine the results.json of earlier runs (folders or "
                        "files, on the same GPU) into one report in --out")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU, torch or jax: check the plumbing with synthetic numbers")
    a = p.parse_args(argv)
    try:
        a.dtypes = parse_list(a.dtypes, DTYPES)
        a.cols = positive_ints(a.cols)
        a.nbytes = parse_bytes(a.bytes)
        a.passes = parse_list(a.passes, PASSES)
        a.impls = parse_list(a.impls, IMPLS)
    except ValueError as e:
        p.error(str(e))
    if a.warmup < 0 or a.iters < 1:
        p.error("--warmup must be >= 0 and --iters >= 1")
    if a.time_budget is not None and a.time_budget <= 0:
        p.error("--time-budget must be positive")
    if a.merge and not a.out:
        p.error("--merge needs --out (the folder of the combined report)")
    if a.merge and (a.dry_run or a.time_budget is not None):
        p.error("--merge measures nothing: it takes neither --dry-run nor --time-budget")
    if "warpnorm" in a.impls and not a.warpnorm and not a.dry_run and not a.merge:
        p.error("--warpnorm PATH is required (or leave warpnorm out of --impls)")
    return a


# ---------------------------------------------------------------------------------------
# Environment

def version_of(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_text(cmd, timeout=60):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return r.stdout if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_smi():
    info = {}
    out = run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                    "--format=csv,noheader"])
    if out:
        first = out.strip().splitlines()[0].split(",")
        if len(first) >= 3:
            info.update(gpu=first[0].strip(), driver=first[1].strip(), memory=first[2].strip())
    out = run_text(["nvidia-smi"])
    m = re.search(r"CUDA Version:\s*([0-9.]+)", out or "")
    if m:
        info["driver_cuda"] = m.group(1)
    return info


def warpnorm_commit(args):
    if args.commit:
        return args.commit, "--commit"
    if args.warpnorm:
        for cmd in ([args.warpnorm, "info", "--json"], [args.warpnorm, "info"]):
            m = re.search(r"commit\W*([0-9a-f]{7,40})", run_text(cmd) or "", re.I)
            if m:
                return m.group(1), "`warpnorm info`"
    head = run_text(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    if head:
        dirty = run_text(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
        return head.strip() + ("-dirty" if dirty else ""), "git of the checkout running this script"
    return "unknown", "not found"


def environment(args, torch=None):
    env = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "host_python": platform.python_version(), "command": " ".join(sys.argv)}
    env.update(nvidia_smi())
    if torch is not None:
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = torch.cuda.get_device_name(0)
        env["sm_count"] = props.multi_processor_count
        env["l2_bytes"] = getattr(props, "L2_cache_size", None)
        env["torch_cuda"] = torch.version.cuda
    for dist in ("torch", "triton", "liger_kernel", "jax", "jaxlib", "flax"):
        env[dist] = version_of(dist)
    env["warpnorm_commit"], env["commit_source"] = warpnorm_commit(args)
    return env


# ---------------------------------------------------------------------------------------
# warpnorm (through its CLI)

def parse_warpnorm_output(text, passes, norm="layer_norm"):
    """Records of `warpnorm bench --json` (schema in bench/README.md) -> (records, notes)."""
    text = text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        start, end = text.find("["), text.rfind("]")
        if start < 0 or end < start:
            raise ValueError("no JSON list in the output of warpnorm bench")
        data = json.loads(text[start:end + 1])
    if not isinstance(data, list):
        raise ValueError("warpnorm bench --json must print a JSON list")
    records, notes = [], []
    for raw in data:
        missing = [f for f in WARPNORM_FIELDS if f not in raw]
        if missing:
            raise ValueError(f"warpnorm record without {', '.join(missing)}: {raw}")
        dtype = NUMPY_NAMES.get(raw["dtype"], raw["dtype"])
        impl, pss = raw["impl"], raw["pass"]
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {raw['dtype']!r} in warpnorm output")
        if impl == "copy":
            impl, pss = "copy_warpnorm", "copy"
        elif impl != "warpnorm" or (pss not in passes and pss != "bwd"):
            continue
        if raw.get("norm", "layer_norm") != norm:
            raise ValueError(f"warpnorm bench timed {raw.get('norm')}, not {norm}")
        rows, cols, ms = int(raw["rows"]), int(raw["cols"]), float(raw["ms"])
        rec = {"impl": impl, "norm": norm, "dtype": dtype, "cols": cols, "rows": rows, "pass": pss,
               "bytes": bytes_moved(dtype, rows, cols, pss, norm=norm), "ms": ms,
               "ms_min": raw.get("ms_min", ms), "ms_max": raw.get("ms_max", ms),
               "iters": raw.get("iters"), "timing": "cuda_events (warpnorm CLI)",
               "sets": raw.get("sets")}
        rec["gbps"] = gbps(rec["bytes"], ms)
        param = NUMPY_NAMES.get(raw.get("param_dtype"), raw.get("param_dtype"))
        if param not in (None, dtype):
            notes.append(f"warpnorm {dtype} D={cols}: parameters in {raw['param_dtype']}, "
                         "the anchors use x's dtype")
        if "bytes" in raw and int(raw["bytes"]) != rec["bytes"]:
            notes.append(f"warpnorm {dtype} D={cols} {pss}: the CLI counts {raw['bytes']} bytes, "
                         f"this script {rec['bytes']}; GB/s here use this script's count")
        records.append(rec)
    return records, notes


def warpnorm_passes(args):
    """`warpnorm bench --pass`: the backward alone is timed too when forward + backward is
    asked for, since the targets are stated for the backward alone."""
    return "all" if "fwd_bwd" in args.passes else "fwd"


def warpnorm_command(args, dtype):
    """`warpnorm bench` for one dtype; --warpnorm-args may override --iters, --warmup and
    --pass (given as `--flag value` or `--flag=value`)."""
    extra = args.warpnorm_args.split()

    def given(flag):
        return any(t == flag or t.startswith(flag + "=") for t in extra)

    cmd = [args.warpnorm or "warpnorm", "bench", "--json", "--dtype", dtype,
           "--cols", ",".join(map(str, args.cols)), "--bytes", args.bytes, "--norm", args.norm]
    for flag, value in (("--iters", args.iters), ("--warmup", args.warmup),
                        ("--pass", warpnorm_passes(args))):
        if not given(flag):
            cmd += [flag, str(value)]
    return cmd + extra


def run_warpnorm(args, records, notes, clock):
    for dtype in args.dtypes:
        if clock.over():
            notes.append(f"warpnorm {dtype}: not measured, the time budget was spent")
            continue
        cmd = warpnorm_command(args, dtype)
        print("running:", " ".join(cmd), flush=True)
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        except OSError as e:
            notes.append(f"warpnorm skipped: cannot run {args.warpnorm}: {e}")
            return
        if r.returncode != 0:
            notes.append(f"warpnorm {dtype}: `{' '.join(cmd)}` exited with {r.returncode}")
            continue
        try:
            recs, more = parse_warpnorm_output(r.stdout, args.passes, args.norm)
        except ValueError as e:
            notes.append(f"warpnorm {dtype}: {e}")
            continue
        for rec in recs:
            want = rows_for_bytes(rec["cols"], dtype, args.nbytes)
            if rec["rows"] != want:
                notes.append(f"warpnorm {dtype} D={rec['cols']}: {rec['rows']} rows, "
                             f"the anchors use {want}")
        records.extend(recs)
        notes.extend(more)


# ---------------------------------------------------------------------------------------
# Timing on the GPU (imports happen here, never at module level)

class Clock:
    """The run's time budget (--time-budget): shapes are never cut in the middle; a shape
    is not started once the budget is spent."""

    def __init__(self, budget_s=None):
        self.start, self.budget = time.monotonic(), budget_s

    def over(self):
        return self.budget is not None and time.monotonic() - self.start > self.budget

def time_cuda_events(torch, step, sets, warmup, iters):
    """Milliseconds of each iteration (a CUDA event pair around each) after `warmup`;
    iteration i uses buffer set i % sets."""
    for i in range(warmup):
        step(i % sets)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        step((warmup + i) % sets)
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def time_batched(run, block, sets, warmup, iters, batch=20):
    """JAX runs on its own streams, where torch's events cannot reach: time batches of
    `batch` back-to-back iterations by the host clock (blocking on the last result) and
    return each batch's time per iteration."""
    out = None
    for i in range(warmup):
        out = run(i % sets)
    if out is not None:
        block(out)
    k, times = warmup, []
    for _ in range(max(5, iters // batch)):
        t0 = time.perf_counter()
        for _ in range(batch):
            out = run(k % sets)
            k += 1
        block(out)
        times.append((time.perf_counter() - t0) * 1e3 / batch)
    return times


class Gpu:
    """Lazily imported torch, the device's L2 and free memory, and the rotation rule."""

    def __init__(self):
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        self.torch = torch
        self.props = torch.cuda.get_device_properties(0)
        self.l2 = getattr(self.props, "L2_cache_size", 50 << 20) or (50 << 20)
        self.tdtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

    def sets(self, touched, alloc_per_set):
        free, _ = self.torch.cuda.mem_get_info()
        footprint = max(MIN_ROTATION_FOOTPRINT, 8 * self.l2)
        n = rotation_sets(touched, footprint, alloc_per_set, int(free * 0.6))
        if n < 1:
            raise MemoryError(f"one buffer set of {alloc_per_set >> 20} MiB does not fit")
        return n


def torch_impl(gpu, impl, dtype, cols, rows, args):
    """Records of copy / torch / torch_compile / triton for one shape."""
    torch = gpu.torch
    F = torch.nn.functional
    dt = gpu.tdtype[dtype]
    act = rows * cols * DTYPES[dtype]
    backward = "fwd_bwd" in args.passes and impl != "copy"
    rms = args.norm == "rms_norm"
    touched = bytes_moved(dtype, rows, cols, "fwd_bwd" if backward else "fwd", norm=args.norm)
    sets = gpu.sets(touched, act * (4 if backward else 2))
    grad = backward and impl in ("torch", "torch_compile", "liger")
    xs = [torch.randn(rows, cols, device="cuda", dtype=dt).requires_grad_(grad) for _ in range(sets)]
    if impl == "copy":
        dst = torch.empty_like(xs[0])
        times = time_cuda_events(torch, lambda i: dst.copy_(xs[i]), sets, args.warmup, args.iters)
        return [make_record("copy", dtype, cols, rows, "copy", times, "cuda_events", sets, args.norm)]
    dys = [torch.randn(rows, cols, device="cuda", dtype=dt) for _ in range(sets)] if backward else []
    w = (1 + 0.1 * torch.randn(cols, device="cuda")).to(dt).requires_grad_(grad)
    b = None if rms else (0.1 * torch.randn(cols, device="cuda")).to(dt).requires_grad_(grad)
    if impl == "triton":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import triton_ln

        def fwd(i):
            return triton_ln.forward(xs[i], w, b, EPS)[0]

        def fwd_bwd(i):
            y, mean, rstd = triton_ln.forward(xs[i], w, b, EPS)
            return y, triton_ln.backward(xs[i], dys[i], w, mean, rstd)
    else:
        if impl == "liger":
            ln = liger_norm(rms)
        elif rms:
            ln = lambda x, w, b: F.rms_norm(x, (cols,), w, EPS)  # noqa: E731
        else:
            ln = lambda x, w, b: F.layer_norm(x, (cols,), w, b, EPS)  # noqa: E731
        if impl == "torch_compile":
            torch._dynamo.reset()
            ln = torch.compile(ln, dynamic=False)
        wanted = (w,) if rms else (w, b)

        def fwd(i):
            return ln(xs[i], w, b)

        def fwd_bwd(i):
            # autograd.grad returns fresh gradients: nothing accumulates into .grad.
            y = ln(xs[i], w, b)
            return y, torch.autograd.grad(y, (xs[i],) + wanted, dys[i])
    out = []
    for pss in args.passes:
        warmup = max(args.warmup, 2)  # torch.compile compiles on the first calls
        try:
            if pss == "fwd":
                with torch.no_grad():
                    times = time_cuda_events(torch, fwd, sets, warmup, args.iters)
            else:
                times = time_cuda_events(torch, fwd_bwd, sets, warmup, args.iters)
        except NotImplementedError as e:
            out.append({"impl": impl, "dtype": dtype, "cols": cols, "rows": rows, "pass": pss,
                        "skipped": str(e)})
            continue
        out.append(make_record(impl, dtype, cols, rows, pss, times, "cuda_events", sets, args.norm))
    return out


def liger_norm(rms):
    """Liger-Kernel's autograd function for the norm, as (x, w, b) -> y."""
    if rms:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        # in_place=False: its backward would otherwise write dx over dy, which the rotation
        # reuses. "llama" (its default) keeps only the inverse RMS in f32.
        return lambda x, w, b: LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", False)
    from liger_kernel.ops.layer_norm import LigerLayerNormFunction
    return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, EPS)


def liger_unavailable(norm):
    """None when Liger-Kernel's function for `norm` imports, else why not."""
    try:
        liger_norm(norm == "rms_norm")
    except Exception as e:  # noqa: BLE001 - missing or broken: recorded, not fatal
        return f"{type(e).__name__}: {e}"
    return None


def flax_impl(dtype, cols, rows, args, l2):
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    if jax.devices()[0].platform != "gpu":
        raise RuntimeError(f"jax runs on {jax.devices()[0].platform}, not a GPU")
    jdt = {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}[dtype]
    # Parameters and output in x's dtype, as PyTorch and warpnorm are run; flax's defaults
    # (use_fast_variance=True) otherwise.
    module = nn.RMSNorm if args.norm == "rms_norm" else nn.LayerNorm
    ln = module(epsilon=EPS, dtype=jdt, param_dtype=jdt)
    params = ln.init(jax.random.PRNGKey(0), jnp.zeros((1, cols), jdt))
    fwd = jax.jit(lambda p, x: ln.apply(p, x))

    def step(p, x, dy):
        y, pull = jax.vjp(lambda p, x: ln.apply(p, x), p, x)
        dp, dx = pull(dy)
        return y, dx, dp
    fwd_bwd = jax.jit(step)
    backward = "fwd_bwd" in args.passes
    act = rows * cols * DTYPES[dtype]
    touched = bytes_moved(dtype, rows, cols, "fwd_bwd" if backward else "fwd", norm=args.norm)
    free = jax.devices()[0].memory_stats() or {}
    budget = int((free.get("bytes_limit", 0) - free.get("bytes_in_use", 0)) * 0.6) or (16 << 30)
    sets = rotation_sets(touched, max(MIN_ROTATION_FOOTPRINT, 8 * l2), act * (4 if backward else 2), budget)
    if sets < 1:
        raise MemoryError("one buffer set does not fit in JAX's memory")
    keys = jax.random.split(jax.random.PRNGKey(1), 2 * sets)
    xs = [jax.random.normal(keys[i], (rows, cols), jdt) for i in range(sets)]
    dys = [jax.random.normal(keys[sets + i], (rows, cols), jdt) for i in range(sets)] if backward else []
    block = jax.block_until_ready
    out = []
    for pss in args.passes:
        if pss == "fwd":
            times = time_batched(lambda i: fwd(params, xs[i]), block, sets, max(args.warmup, 2), args.iters)
        else:
            times = time_batched(lambda i: fwd_bwd(params, xs[i], dys[i]), block, sets,
                                 max(args.warmup, 2), args.iters)
        out.append(make_record("flax", dtype, cols, rows, pss, times, "host clock over batches of 20",
                               sets, args.norm))
    return out


def run_gpu(args, records, notes, clock, checkpoint):
    """The Python-side implementations, shape by shape; returns the torch module or None.
    `checkpoint()` runs after every shape, so a run stopped from outside keeps its records."""
    gpu = None
    wanted = [i for i in IMPLS if i in args.impls and i not in ("warpnorm", "flax")]
    if wanted:
        try:
            gpu = Gpu()
        except Exception as e:  # noqa: BLE001 - any import or driver failure means "skip"
            notes.append(f"{', '.join(wanted)} skipped: torch unavailable ({e})")
            wanted = []
    if "torch_compile" in wanted:
        import torch
        for name in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 1024)
    if "triton" in wanted:
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import triton_ln  # noqa: F401
        except Exception as e:  # noqa: BLE001
            notes.append(f"triton skipped: {e}")
            wanted.remove("triton")
    if "liger" in wanted:
        why = liger_unavailable(args.norm)
        if why:
            notes.append(f"liger unavailable: {why}")
            wanted.remove("liger")
    if args.norm == "rms_norm":
        if "triton" in wanted:
            wanted.remove("triton")
            notes.append("triton skipped: the tutorial-style anchor has no RMSNorm")
        if gpu and not hasattr(gpu.torch.nn.functional, "rms_norm"):
            for impl in ("torch", "torch_compile"):
                if impl in wanted:
                    wanted.remove(impl)
                    notes.append(f"{impl} skipped: torch {gpu.torch.__version__} has no "
                                 "F.rms_norm (it came in torch 2.4)")
    use_flax = "flax" in args.impls
    if use_flax:
        try:
            import jax
            import flax.linen  # noqa: F401
            if jax.devices()[0].platform != "gpu":
                raise RuntimeError(f"jax has no GPU backend ({jax.devices()[0].platform})")
        except Exception as e:  # noqa: BLE001
            notes.append(f"flax skipped: {e}")
            use_flax = False
    l2 = gpu.l2 if gpu else 50 << 20
    skipped = []
    for dtype in args.dtypes:
        for cols in args.cols:
            if clock.over():
                skipped.append(f"{dtype} D={cols}")
                continue
            rows = rows_for_bytes(cols, dtype, args.nbytes)
            print(f"{dtype} D={cols} rows={rows}", flush=True)
            for impl in wanted:
                try:
                    for rec in torch_impl(gpu, impl, dtype, cols, rows, args):
                        if "skipped" in rec:
                            notes.append(f"{impl} {dtype} D={cols} {rec['pass']}: {rec['skipped']}")
                        else:
                            records.append(rec)
                except Exception as e:  # noqa: BLE001 - one failure must not end the run
                    notes.append(f"{impl} {dtype} D={cols}: {type(e).__name__}: {e}")
                finally:
                    gpu.torch.cuda.synchronize()
                    gpu.torch.cuda.empty_cache()
            if use_flax:
                try:
                    records.extend(flax_impl(dtype, cols, rows, args, l2))
                except Exception as e:  # noqa: BLE001
                    notes.append(f"flax {dtype} D={cols}: {type(e).__name__}: {e}")
            checkpoint()
    if skipped and (wanted or use_flax):
        notes.append(f"time budget of {clock.budget:g} s spent: the anchors were not run on "
                     + ", ".join(skipped))
    return gpu.torch if gpu else None


# ---------------------------------------------------------------------------------------
# Report

def index(records):
    return {(r["impl"], r["dtype"], r["cols"], r["pass"]): r for r in records}


def ceiling(idx, dtype, cols):
    """GB/s of the copy for this shape: this process's copy, else the warpnorm CLI's."""
    for impl in ("copy", "copy_warpnorm"):
        rec = idx.get((impl, dtype, cols, "copy"))
        if rec:
            return rec["gbps"]
    return None


def speedups(idx, dtype, pss, anchor, cols_list):
    out = []
    for cols in cols_list:
        wn, other = idx.get(("warpnorm", dtype, cols, pss)), idx.get((anchor, dtype, cols, pss))
        if wn and other and other["gbps"] > 0:
            out.append(wn["gbps"] / other["gbps"])
    return out


# The speed targets warpnorm is tuned to (16-bit dtypes; f32 is reported against them too).
FWD_TARGET_LONG, FWD_TARGET_SHORT, BWD_TARGET = 90.0, 80.0, 85.0
EAGER_SPEEDUP_TARGET = 1.3
FAST_ANCHORS = ("torch_compile", "triton", "liger", "flax")
FAST_ANCHOR_NAMES = ", ".join({"torch_compile": "torch.compile"}.get(a, SHORT[a]) for a in FAST_ANCHORS)


def target_rows(idx, dtypes, cols_list):
    """(target, dtype, worst case, met) for each target that the records can decide."""
    out = []

    def pct_rows(pss, wanted_cols):
        got = []
        for c in wanted_cols:
            r, top = idx.get(("warpnorm", d, c, pss)), ceiling(idx, d, c)
            if r and top:
                got.append((100 * r["gbps"] / top, c))
        return got

    for d in dtypes:
        long_cols = [c for c in cols_list if c >= 1024]
        short_cols = [c for c in cols_list if 128 <= c <= 512]
        for label, pss, cols, goal in [
            (f"forward >= {FWD_TARGET_LONG:.0f}% of copy, D >= 1024", "fwd", long_cols, FWD_TARGET_LONG),
            (f"forward >= {FWD_TARGET_SHORT:.0f}% of copy, D in 128..512", "fwd", short_cols, FWD_TARGET_SHORT),
            (f"backward >= {BWD_TARGET:.0f}% of copy, D >= 1024", "bwd", long_cols, BWD_TARGET),
        ]:
            got = pct_rows(pss, cols)
            if got:
                worst = min(got)
                out.append((label, d, f"lowest {worst[0]:.1f}% at D={worst[1]} ({len(got)} shapes)",
                            worst[0] >= goal))
        s = speedups(idx, d, "fwd_bwd", "torch", cols_list)
        g = geomean(s)
        if g:
            out.append((f"forward + backward >= {EAGER_SPEEDUP_TARGET}x PyTorch eager (geomean)", d,
                        f"{g:.2f}x over {len(s)} shapes", g >= EAGER_SPEEDUP_TARGET))
        for pss in ("fwd", "fwd_bwd"):
            behind, compared = [], 0
            for c in cols_list:
                wn = idx.get(("warpnorm", d, c, pss))
                best = [(idx[(a, d, c, pss)]["gbps"], a) for a in FAST_ANCHORS if (a, d, c, pss) in idx]
                if not wn or not best:
                    continue
                compared += 1
                top, who = max(best)
                if wn["gbps"] < top:
                    behind.append(f"D={c} ({wn['gbps'] / top:.2f}x of {SHORT[who]})")
            if compared:
                out.append((f"{pss}: no slower than the best of {FAST_ANCHOR_NAMES}", d,
                            ("behind on " + ", ".join(behind)) if behind else f"ahead on all {compared} shapes",
                            not behind))
    return out


def render_report(env, records, notes, args, plot_name, synthetic=False):
    idx = index(records)
    impls = [i for i in ["warpnorm"] + ANCHORS if any(k[0] == i for k in idx)]
    anchors = [a for a in ANCHORS if a in impls]
    L = []
    device = env.get("gpu", "unknown GPU")
    label = NORMS[args.norm]
    L.append(f"# {label} bandwidth: warpnorm and anchors on {device}")
    L.append("")
    if synthetic:
        L.append("> **Dry run: every number below is SYNTHETIC**, made up to exercise the report "
                 "and plot. Nothing was measured.")
        L.append("")
    L.append("## Environment")
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    for key, label in [("date", "date"), ("gpu", "GPU"), ("memory", "GPU memory"),
                       ("sm_count", "SMs"), ("l2_bytes", "L2 bytes"), ("driver", "driver"),
                       ("driver_cuda", "CUDA (driver)"), ("torch_cuda", "CUDA (torch build)"),
                       ("torch", "torch"), ("triton", "triton"),
                       ("liger_kernel", "Liger-Kernel"), ("jax", "jax"),
                       ("jaxlib", "jaxlib"), ("flax", "flax"), ("host_python", "python"),
                       ("warpnorm_commit", "warpnorm commit"), ("commit_source", "commit from"),
                       ("command", "command")]:
        value = env.get(key)
        L.append(f"| {label} | {'`' + str(value) + '`' if key == 'command' else value if value is not None else 'n/a'} |")
    L.append("")
    L.append("## Method")
    L.append("")
    params = "scale" if args.norm == "rms_norm" else "scale, bias"
    L.append(f"- {label}, shapes: x is `[rows, D]` with rows = {args.bytes} / (D x element "
             f"size); parameters ({params}) and outputs in x's dtype; epsilon 1e-5.")
    if args.norm == "rms_norm":
        moved = ("forward reads x, scale and writes y, rstd (f32 per row); backward reads x, dy, "
                 "scale, rstd and writes dx, dscale")
    else:
        moved = ("forward reads x, scale, bias and writes y, mean, rstd (f32 per row); backward "
                 "reads x, dy, scale, mean, rstd and writes dx, dscale, dbias")
    L.append(f"- GB/s = bytes a {label} must move / median time, the same count for every "
             f"implementation: {moved}; fwd_bwd is both. The copy reads x and writes as much. "
             "Decimal GB (1e9).")
    L.append("- % = share of the device-to-device copy's GB/s on the same shape, measured in "
             "the same run (the bandwidth ceiling): this script's torch copy, or the warpnorm "
             "CLI's own copy where torch is missing.")
    L.append(f"- Timing: {args.warmup} warm-up iterations, then the median of {args.iters}; CUDA "
             "events around each iteration (warpnorm, torch, torch.compile, Triton, Liger, copy); "
             "flax by the host clock over batches of 20 back-to-back iterations (JAX's streams "
             "are out of reach of torch's events). Inputs rotate through several buffer sets "
             "(together at least 512 MiB or 8x L2) so L2 does not flatter.")
    L.append("- Ratios: warpnorm GB/s / anchor GB/s (> 1: warpnorm faster). Column names: "
             + ("eager = PyTorch F.rms_norm, compile = torch.compile of it, Liger = "
                "Liger-Kernel's LigerRMSNormFunction (casting mode llama), flax = "
                "flax.linen.RMSNorm under jax.jit." if args.norm == "rms_norm" else
                "eager = PyTorch F.layer_norm, compile = torch.compile of it, Triton = the "
                "tutorial-style kernel (bench/triton_ln.py), Liger = Liger-Kernel's "
                "LigerLayerNormFunction, flax = flax.linen.LayerNorm under jax.jit (its "
                "default use_fast_variance=True)."))
    L.append("")
    L.append("## Summary: geometric-mean speedup of warpnorm")
    L.append("")
    cols = [(d, p) for d in args.dtypes for p in args.passes]
    L.append("| over | " + " | ".join(f"{d} {p}" for d, p in cols) + " | all |")
    L.append("|---|" + "---:|" * (len(cols) + 1))
    for a in anchors:
        cells, every = [], []
        for d, p in cols:
            s = speedups(idx, d, p, a, args.cols)
            every += s
            g = geomean(s)
            cells.append(f"{g:.2f}x ({len(s)})" if g else "n/a")
        g = geomean(every)
        L.append(f"| {LABELS[a]} | " + " | ".join(cells) + f" | {f'{g:.2f}x' if g else 'n/a'} |")
    if "torch" in anchors and "fwd_bwd" in args.passes:
        s = [x for d in args.dtypes for x in speedups(idx, d, "fwd_bwd", "torch", args.cols)]
        g = geomean(s)
        L.append("")
        L.append(f"**Forward + backward over PyTorch eager, geometric mean over {len(s)} shapes: "
                 f"{f'{g:.2f}x' if g else 'n/a'}.** (Count of shapes in parentheses above.)")
    L.append("")
    targets = target_rows(idx, args.dtypes, args.cols)
    if targets:
        L.append("## Targets")
        L.append("")
        L.append("Stated for the 16-bit dtypes; f32 is held to the same lines for reference. "
                 "The backward is warpnorm's backward alone (dx, dscale, dbias), timed by its CLI.")
        L.append("")
        L.append("| target | dtype | result | met |")
        L.append("|---|---|---|---|")
        for label, d, result, met in targets:
            L.append(f"| {label} | {d} | {result} | {'yes' if met else '**no**'} |")
        L.append("")
    passes = args.passes + (["bwd"] if any(k[0] == "warpnorm" and k[3] == "bwd" for k in idx) else [])
    for d in args.dtypes:
        for p in passes:
            L.append(f"## {d}, {p}")
            L.append("")
            head = ["D", "rows", "copy GB/s"] + [f"{SHORT[i]} GB/s (%)" for i in impls] + \
                [f"wn / {SHORT[a]}" for a in anchors if "warpnorm" in impls]
            L.append("| " + " | ".join(head) + " |")
            L.append("|" + "---:|" * len(head))
            for c in args.cols:
                top = ceiling(idx, d, c)
                rows = next((r["rows"] for k, r in idx.items() if k[1] == d and k[2] == c), None)
                cells = [str(c), str(rows) if rows else "", f"{top:.0f}" if top else "n/a"]
                for i in impls:
                    r = idx.get((i, d, c, p))
                    if not r:
                        cells.append("—")
                    elif top:
                        cells.append(f"{r['gbps']:.0f} ({100 * r['gbps'] / top:.0f}%)")
                    else:
                        cells.append(f"{r['gbps']:.0f}")
                if "warpnorm" in impls:
                    wn = idx.get(("warpnorm", d, c, p))
                    for a in anchors:
                        r = idx.get((a, d, c, p))
                        cells.append(f"{wn['gbps'] / r['gbps']:.2f}" if wn and r and r["gbps"] else "—")
                L.append("| " + " | ".join(cells) + " |")
            L.append("")
    L.append("## Notes")
    L.append("")
    if notes:
        L.extend(f"- {n}" for n in notes)
    else:
        L.append("- none")
    L.append("")
    L.append(f"![GB/s against D]({plot_name})")
    L.append("")
    L.append("Raw records: `results.json`.")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------------------------
# Plot: matplotlib when present, else an SVG written by hand

def series(records, dtype, pss, impls):
    idx = index(records)
    out = {}
    for i in impls:
        key_pass = "copy" if i == "copy" else pss
        pts = sorted((k[2], r["gbps"]) for k, r in idx.items()
                     if k[0] == i and k[1] == dtype and k[3] == key_pass)
        if pts:
            out[i] = pts
    return out


def plot_png(path, records, dtypes, passes, impls, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(dtypes), len(passes), figsize=(6 * len(passes), 3.6 * len(dtypes)),
                             squeeze=False)
    for r, d in enumerate(dtypes):
        for c, p in enumerate(passes):
            ax = axes[r][c]
            for i, pts in series(records, d, p, impls).items():
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, label=LABELS[i], color=COLORS[i],
                        linestyle="--" if i == "copy" else "-")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{d}, {p}")
            ax.set_xlabel("D (row length)")
            ax.set_ylabel("GB/s")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.text(0.5, 0.005, title, ha="center", va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, 0.02, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def nice_ceiling(v):
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * mag >= v:
            return step * mag
    return 10 * mag


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plot_svg(path, records, dtypes, passes, impls, title):
    pw, ph, ml, mr, mt, mb = 460, 300, 62, 16, 30, 44
    legend_h, footer_h = 34, 20
    width, height = pw * len(passes), ph * len(dtypes) + legend_h + footer_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    present = [i for i in impls if any(series(records, d, p, [i]) for d in dtypes for p in passes)]
    x = 10
    for i in present:
        dash = ' stroke-dasharray="5,3"' if i == "copy" else ""
        out.append(f'<line x1="{x}" y1="18" x2="{x + 22}" y2="18" stroke="{COLORS[i]}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{x + 27}" y="22">{esc(LABELS[i])}</text>')
        x += 40 + 7 * len(LABELS[i])
    for r, d in enumerate(dtypes):
        for c, p in enumerate(passes):
            ox, oy = c * pw, legend_h + r * ph
            data = series(records, d, p, impls)
            all_x = [px for pts in data.values() for px, _ in pts] or [128, 65536]
            lo, hi = math.log2(min(all_x)), math.log2(max(all_x))
            hi = hi if hi > lo else lo + 1
            ymax = nice_ceiling(1.05 * max([py for pts in data.values() for _, py in pts] or [1]))
            x0, x1, y0, y1 = ox + ml, ox + pw - mr, oy + ph - mb, oy + mt
            sx = lambda v: x0 + (math.log2(v) - lo) / (hi - lo) * (x1 - x0)  # noqa: E731
            sy = lambda v: y0 - v / ymax * (y0 - y1)  # noqa: E731
            out.append(f'<text x="{(x0 + x1) / 2}" y="{oy + 18}" text-anchor="middle" '
                       f'font-weight="bold">{esc(d)}, {esc(p)}</text>')
            out.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" '
                       'fill="none" stroke="#444"/>')
            for k in range(6):
                v = ymax * k / 5
                out.append(f'<line x1="{x0}" y1="{sy(v):.1f}" x2="{x1}" y2="{sy(v):.1f}" '
                           'stroke="#ddd"/>')
                out.append(f'<text x="{x0 - 5}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
            for e in range(math.ceil(lo), math.floor(hi) + 1):
                v = 2 ** e
                label = f"{v // 1024}K" if v >= 1024 else str(v)
                out.append(f'<line x1="{sx(v):.1f}" y1="{y0}" x2="{sx(v):.1f}" y2="{y0 + 4}" '
                           'stroke="#444"/>')
                out.append(f'<text x="{sx(v):.1f}" y="{y0 + 16}" text-anchor="middle">{label}</text>')
            out.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + 32}" text-anchor="middle">'
                       'D (row length, log scale)</text>')
            out.append(f'<text x="{ox + 14}" y="{(y0 + y1) / 2}" text-anchor="middle" '
                       f'transform="rotate(-90 {ox + 14} {(y0 + y1) / 2})">GB/s</text>')
            for i, pts in data.items():
                dash = ' stroke-dasharray="5,3"' if i == "copy" else ""
                coords = " ".join(f"{sx(px):.1f},{sy(py):.1f}" for px, py in pts)
                out.append(f'<polyline points="{coords}" fill="none" stroke="{COLORS[i]}" '
                           f'stroke-width="1.6"{dash}/>')
                out.extend(f'<circle cx="{sx(px):.1f}" cy="{sy(py):.1f}" r="2.2" '
                           f'fill="{COLORS[i]}"/>' for px, py in pts)
    out.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" font-size="10">'
               f'{esc(title)}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def write_plot(folder, records, args, title):
    impls = ["copy", "warpnorm"] + ANCHORS
    use_png = args.plot == "png" or (args.plot == "auto" and version_of("matplotlib"))
    if use_png:
        try:
            name = "plot.png"
            plot_png(folder / name, records, args.dtypes, args.passes, impls, title)
            return name
        except ImportError:
            if args.plot == "png":
                raise
    name = "plot.svg"
    plot_svg(folder / name, records, args.dtypes, args.passes, impls, title)
    return name


# ---------------------------------------------------------------------------------------
# Output

def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def results_folder(args, env):
    if args.out:
        folder = Path(args.out)
    else:
        day = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        suffix = "-rms-norm" if args.norm == "rms_norm" else ""
        base = REPO / "bench" / "results" / f"{day}-{slug(env.get('gpu', 'gpu'))}{suffix}"
        folder, n = base, 2
        while folder.exists() and any(folder.iterdir()):
            folder, n = base.with_name(f"{base.name}-{n}"), n + 1
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results(folder, env, records, notes, args, synthetic=False):
    title = (f"{env.get('gpu', 'unknown GPU')}, warpnorm {str(env.get('warpnorm_commit'))[:12]}, "
             f"{env.get('date')}; GB/s of the bytes a {NORMS[args.norm]} must move")
    if synthetic:
        title = "SYNTHETIC NUMBERS (dry run), nothing measured; " + title
    plot_name = write_plot(folder, records, args, title)
    report = render_report(env, records, notes, args, plot_name, synthetic)
    (folder / "report.md").write_text(report)
    write_json(folder, env, records, notes, args, synthetic)
    return folder / "report.md", folder / plot_name


def write_json(folder, env, records, notes, args, synthetic=False):
    payload = {"env": env, "synthetic": synthetic, "norm": args.norm, "bytes": args.nbytes,
               "bytes_text": args.bytes,
               "warmup": args.warmup, "iters": args.iters, "dtypes": args.dtypes,
               "cols": args.cols, "passes": args.passes, "records": records, "notes": notes}
    tmp = folder / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(folder / "results.json")


def load_results(path):
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--merge: cannot read {path}: {e}")
    for field in ("env", "records", "notes", "bytes"):
        if field not in data:
            raise SystemExit(f"--merge: {path} has no `{field}`: not a results.json of this script")
    return path, data


def merge(args):
    """One report from several runs on the same GPU (a long comparison split into calls
    that each fit a machine's time limit). Where two runs measured the same shape, the one
    named later on the command line wins."""
    runs = [load_results(p) for p in args.merge]
    first = runs[0][1]
    # A checkpoint of a stopped run may lack what only a finished run records (torch's
    # device facts; the GPU name where nvidia-smi is missing).
    gpus = {d["env"]["gpu"] for _, d in runs if d["env"].get("gpu")}
    if len(gpus) > 1:
        raise SystemExit(f"--merge: runs from different GPUs ({', '.join(map(str, gpus))}) "
                         "cannot share a report: timings compare only on one device")
    sizes = {d["bytes"] for _, d in runs}
    if len(sizes) > 1:
        raise SystemExit(f"--merge: runs of different problem sizes ({sorted(sizes)} bytes)")
    norms = {d.get("norm", "layer_norm") for _, d in runs}
    if len(norms) > 1:
        raise SystemExit(f"--merge: runs of different normalizations ({', '.join(sorted(norms))})")
    args.norm = norms.pop()
    by_key, notes = {}, []
    for path, data in runs:
        if data.get("synthetic"):
            raise SystemExit(f"--merge: {path} holds synthetic (dry-run) numbers")
        for r in data["records"]:
            by_key[(r["impl"], r["dtype"], r["cols"], r["pass"])] = r
        notes += [n for n in data["notes"] if not n.startswith("partial:")]
        if any(n.startswith("partial:") for n in data["notes"]):
            notes.append(f"{path.parent.name}: stopped before it finished (a checkpoint); "
                         "shapes it did not reach are missing")
        notes.append(f"merged from {path.parent.name}/{path.name}: {data['env'].get('date')}, "
                     f"commit {data['env'].get('warpnorm_commit')}, {len(data['records'])} records")
    commits = {d["env"].get("warpnorm_commit") for _, d in runs}
    if len(commits) > 1:
        notes.append("the merged runs name different warpnorm commits: " + ", ".join(sorted(map(str, commits))))
    env = {}
    for _, d in runs:
        for key, value in d["env"].items():
            if env.get(key) is None:
                env[key] = value
    timing = {(d.get("warmup"), d.get("iters")) for _, d in runs}
    if len(timing) > 1:
        notes.append("the merged runs used different warm-up / timed iterations: "
                     + ", ".join(f"{w} / {i}" for w, i in sorted(timing, key=str)))
    env["command"] = " ".join(sys.argv)
    env["date"] = ", ".join(sorted({str(d["env"].get("date")) for _, d in runs}))
    # The report's shape lists are the union of the runs', in the canonical order.
    args.nbytes, args.bytes = first["bytes"], first.get("bytes_text", f"{first['bytes']} bytes")
    args.warmup, args.iters = first.get("warmup", args.warmup), first.get("iters", args.iters)
    args.dtypes = [d for d in DTYPES if any(d in r[1].get("dtypes", []) for r in runs)]
    args.cols = sorted({c for _, d in runs for c in d.get("cols", [])})
    args.passes = [p for p in PASSES if any(p in r[1].get("passes", []) for r in runs)]
    folder = results_folder(args, env)
    report, plot = write_results(folder, env, list(by_key.values()), notes, args)
    print(f"merged {len(runs)} runs into {report}, {plot} and {folder / 'results.json'}")
    return 0


# ---------------------------------------------------------------------------------------
# Dry run: synthetic numbers through the whole pipeline

def self_check():
    assert parse_bytes("256MiB") == 256 << 20 and parse_bytes("1g") == 1 << 30
    assert parse_bytes("100MB") == 10**8 and parse_bytes("0.5GiB") == 1 << 29
    for bad in ("", "MiB", "12XB", "-1MiB", "0"):
        try:
            parse_bytes(bad)
        except ValueError:
            continue
        raise AssertionError(f"parse_bytes accepted {bad!r}")
    assert rows_for_bytes(1024, "f32", 256 << 20) == 65536
    assert rows_for_bytes(5120, "f16", 256 << 20) == 26214
    assert rows_for_bytes(1 << 20, "f32", 1024) == 1
    # Same numbers as the Rust unit test: 1000 x 512 bf16 (parameters in f32 there).
    act, stats, param = 1000 * 512 * 2, 1000 * 8, 512 * 4
    assert bytes_moved("bf16", 1000, 512, "fwd", "f32") == 2 * act + stats + 2 * param
    assert bytes_moved("bf16", 1000, 512, "bwd", "f32") == 3 * act + stats + 3 * param
    assert bytes_moved("bf16", 1000, 512, "fwd_bwd", "f32") == 5 * act + 2 * stats + 5 * param
    assert bytes_moved("bf16", 1000, 512, "copy") == 2 * act
    # RMSNorm: no bias or dbias, rstd only (the same numbers as the Rust unit test).
    assert bytes_moved("bf16", 1000, 512, "fwd", "f32", "rms_norm") == 2 * act + stats // 2 + param
    assert bytes_moved("bf16", 1000, 512, "bwd", "f32", "rms_norm") == 3 * act + stats // 2 + 2 * param
    mib = 1 << 20
    assert rotation_sets(256 * mib, 512 * mib, 512 * mib, 64 << 30) == 2
    assert rotation_sets(8 * mib, 512 * mib, 16 * mib, 100 * mib) == 6
    assert median([3, 1, 2]) == 2 and median([4, 1, 3, 2]) == 2.5 and median([]) is None
    assert abs(geomean([2, 8]) - 4) < 1e-12
    # --warpnorm-args overrides the flags the script would otherwise pass.
    cmd = warpnorm_command(parse_args(["--warpnorm", "w", "--warpnorm-args=--iters=7 --pass bwd"]), "bf16")
    assert cmd.count("--pass") == 1 and "--iters" not in cmd and "--iters=7" in cmd, cmd
    assert "--warmup" in cmd and cmd[cmd.index("--pass") + 1] == "bwd", cmd


def synthetic_records(args):
    """Made-up GB/s with plausible shapes, plus a round trip through the warpnorm parser."""
    # Arbitrary, deliberately not favouring any implementation: these exercise the
    # pipeline and say nothing about real performance.
    copy_bw = 1000.0
    eff = {"warpnorm": (0.60, 0.50), "torch": (0.65, 0.55), "torch_compile": (0.55, 0.45),
           "triton": (0.50, 0.60), "liger": (0.62, 0.48), "flax": (0.45, 0.40)}
    records, cli_output = [], []
    for d in args.dtypes:
        for c in args.cols:
            rows = rows_for_bytes(c, d, args.nbytes)
            penalty = 1 - 0.25 * math.exp(-c / 512) - 0.1 * (c > 16384)
            for impl in [i for i in ["copy"] + list(eff) if i in args.impls]:
                passes = args.passes + (["bwd"] if impl == "warpnorm" and "fwd_bwd" in args.passes else [])
                for p in (["copy"] if impl == "copy" else passes):
                    f = 1.0 if impl == "copy" else eff[impl][p != "fwd"] * penalty
                    if impl == "triton" and (args.norm == "rms_norm" or
                                             (p == "fwd_bwd" and c * DTYPES[d] > 65536)):
                        continue
                    ms = bytes_moved(d, rows, c, p, norm=args.norm) / (copy_bw * f * 1e9) * 1e3
                    times = [ms * (1 + 0.01 * k) for k in (-1, 0, 1)]
                    if impl == "warpnorm":
                        rec = make_record(impl, d, c, rows, p, times, "cuda_events", 2, args.norm)
                        cli_output.append({**rec, "param_dtype": d, "copy_gbps": copy_bw,
                                           "pct_copy": 100 * rec["gbps"] / copy_bw,
                                           "device": "cuda:0 (synthetic)"})
                    else:
                        records.append(make_record(impl, d, c, rows, p, times, "synthetic", 2,
                                                   args.norm))
    parsed, notes = parse_warpnorm_output("progress line\n" + json.dumps(cli_output), args.passes,
                                          args.norm)
    assert len(parsed) == len(cli_output) and not notes, notes
    return records + parsed


def dry_run(args):
    self_check()
    print("shapes (dtype, D, rows):")
    for d in args.dtypes:
        print("  " + d + ": " + ", ".join(f"{c}x{rows_for_bytes(c, d, args.nbytes)}" for c in args.cols))
    for d in args.dtypes:
        print("would run:", " ".join(warpnorm_command(args, d)))
    env = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "gpu": "SYNTHETIC (dry run)", "host_python": platform.python_version(),
           "command": " ".join(sys.argv), "warpnorm_commit": warpnorm_commit(args)[0],
           "commit_source": "dry run"}
    records = synthetic_records(args)
    notes = ["dry run: synthetic numbers, nothing was measured",
             "triton fwd_bwd: rows over 64 KB are outside the tutorial-style backward"]
    # The import guard a real run uses: what it would say on this machine.
    why = liger_unavailable(args.norm)
    notes.append(f"liger on this machine: {'unavailable: ' + why if why else 'importable'}")
    print(notes[-1])
    if not args.out:
        args.out = tempfile.mkdtemp(prefix="warpnorm-compare-dry-")
    folder = results_folder(args, env)
    report, plot = write_results(folder, env, records, notes, args, synthetic=True)
    text = report.read_text()
    assert "SYNTHETIC" in text and "PyTorch eager" in text and plot.stat().st_size > 0
    assert "## Targets" in text and "backward >= 85%" in text, "the report names the targets"
    json.loads((folder / "results.json").read_text())
    check_merge(folder, env, records, notes, args)
    print(f"dry run ok: {report} and {plot}")
    return 0


def check_merge(folder, env, records, notes, args):
    """Two halves of the synthetic run, merged, give back every record; other GPUs and
    synthetic inputs are refused."""
    halves = []
    for k, part in enumerate((records[::2], records[1::2])):
        sub = folder / f"merge-check-{k}"
        sub.mkdir(exist_ok=True)
        write_json(sub, {**env, "gpu": "check"}, part, notes, args)
        halves.append(str(sub))
    merged = folder / "merge-check"
    argv = ["--merge", *halves, "--out", str(merged)]
    assert main(argv) == 0
    data = json.loads((merged / "results.json").read_text())
    assert len(data["records"]) == len(records), (len(data["records"]), len(records))

    def refused(why):
        try:
            main(argv)
        except SystemExit as e:
            assert why in str(e), e
        else:
            raise AssertionError(f"--merge accepted {why}")

    write_json(Path(halves[1]), {**env, "gpu": "other"}, records[1::2], notes, args)
    refused("different GPUs")
    write_json(Path(halves[1]), {**env, "gpu": "check"}, records[1::2], notes, args, synthetic=True)
    refused("synthetic")
    for h in halves + [str(merged)]:
        shutil.rmtree(h)


# ---------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    # JAX would otherwise reserve most of the GPU memory at its first use.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.merge:
        return merge(args)
    records, notes = [], []
    clock = Clock(args.time_budget)
    env = environment(args)
    folder = results_folder(args, env)

    def checkpoint():
        write_json(folder, env, records, notes + ["partial: the run had not finished"], args)

    if "warpnorm" in args.impls:
        if shutil.which(args.warpnorm) is None and not Path(args.warpnorm).is_file():
            notes.append(f"warpnorm skipped: {args.warpnorm} not found")
        else:
            run_warpnorm(args, records, notes, clock)
            checkpoint()
    torch = run_gpu(args, records, notes, clock, checkpoint)
    env = environment(args, torch)
    report, plot = write_results(folder, env, records, notes, args)
    print(f"wrote {report}, {plot} and {folder / 'results.json'}")
    for n in notes:
        print("note:", n)
    return 0 if records else 1


if __name__ == "__main__":
    sys.exit(main())
