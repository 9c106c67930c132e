"""LayerNorm forward and backward in Triton, an anchor for bench/compare.py.

Written in the style of the Triton LayerNorm tutorial (statistics in f32, a row per
program, per-program partial sums of dscale/dbias reduced by a second kernel), with two
changes that make it a fairer anchor: short rows are processed several to a program, and
the partial sums are written without locks, so the gradients are deterministic.

Like the tutorial's backward, the backward holds a row in registers, so it covers rows up to
64 KB (16384 f32 or 32768 f16/bf16 elements); longer rows raise NotImplementedError. The
forward loops over any row length.

Imported only when torch and triton are present (compare.py skips Triton otherwise).
"""

import functools

import torch
import triton
import triton.language as tl

# Rows up to this many bytes are held in registers (the tutorial's fused-kernel limit).
MAX_ROW_BYTES = 65536
# Elements a program aims to hold when it processes several short rows.
TILE_ELEMS = 4096


@triton.jit
def _fwd_tile(X, Y, W, B, Mean, Rstd, M, N, eps,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # BLOCK_M whole rows per program, each row entirely in registers.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    mask = rmask[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + rows, mean, mask=rmask)
    tl.store(Rstd + rows, rstd, mask=rmask)


@triton.jit
def _fwd_loop(X, Y, W, B, Mean, Rstd, N, eps, BLOCK_N: tl.constexpr):
    # One row per program, read in chunks: mean, then centred variance, then y.
    row = tl.program_id(0).to(tl.int64)
    X += row * N
    Y += row * N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        acc += tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x = tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
        xc = tl.where(cols < N, x - mean, 0.0)
        acc += xc * xc
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        m = cols < N
        x = tl.load(X + cols, mask=m, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(Y + cols, ((x - mean) * rstd * w + b).to(Y.dtype.element_ty), mask=m)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _bwd_tile(X, DY, DX, W, Mean, Rstd, PW, PB, M, N,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Persistent: program p takes row tiles p, p + P, ...; dscale/dbias sums stay in
    # registers and are written once as this program's partial row.
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), programs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=rmask, other=0.0)
        rstd = tl.load(Rstd + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = tl.where(mask, w[None, :] * dy, 0.0)
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    tl.store(PW + pid * N + cols, dw, mask=cmask)
    tl.store(PB + pid * N + cols, db, mask=cmask)


@triton.jit
def _sum_partials(PW, PB, DW, DB, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    # Column block per program; partial rows summed in a fixed order (deterministic).
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    aw = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    ab = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts < P)[:, None] & cmask[None, :]
        offs = parts[:, None].to(tl.int64) * N + cols[None, :]
        aw += tl.load(PW + offs, mask=mask, other=0.0)
        ab += tl.load(PB + offs, mask=mask, other=0.0)
    tl.store(DW + cols, tl.sum(aw, axis=0).to(DW.dtype.element_ty), mask=cmask)
    tl.store(DB + cols, tl.sum(ab, axis=0).to(DB.dtype.element_ty), mask=cmask)


def _tile(n):
    """(BLOCK_M, BLOCK_N, num_warps) for a row of n elements held in registers."""
    block_n = triton.next_power_of_2(n)
    block_m = max(1, min(64, TILE_ELEMS // block_n))
    warps = max(1, min(16, block_m * block_n // 512))
    return block_m, block_n, warps


@functools.lru_cache(maxsize=None)
def _sm_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def fits_in_registers(n, elem_bytes):
    return n * elem_bytes <= MAX_ROW_BYTES


def forward(x, w, b, eps):
    """y, mean, rstd of a LayerNorm over the last axis of a contiguous 2-D x."""
    m, n = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(m, dtype=torch.float32, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if fits_in_registers(n, x.element_size()):
        block_m, block_n, warps = _tile(n)
        grid = (triton.cdiv(m, block_m),)
        _fwd_tile[grid](x, y, w, b, mean, rstd, m, n, eps,
                        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    else:
        block_n = MAX_ROW_BYTES // x.element_size()
        _fwd_loop[(m,)](x, y, w, b, mean, rstd, n, eps, BLOCK_N=block_n, num_warps=16)
    return y, mean, rstd


def backward(x, dy, w, mean, rstd):
    """dx, dscale, dbias from the statistics of forward()."""
    m, n = x.shape
    if not fits_in_registers(n, x.element_size()):
        raise NotImplementedError(
            f"rows of {n * x.element_size()} bytes: the tutorial-style backward holds a row "
            f"in registers (up to {MAX_ROW_BYTES} bytes)")
    block_m, block_n, warps = _tile(n)
    sms = _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())
    programs = max(1, min(triton.cdiv(m, block_m), sms * max(1, 32 // warps)))
    dx = torch.empty_like(x)
    pw = torch.empty((programs, n), dtype=torch.float32, device=x.device)
    pb = torch.empty((programs, n), dtype=torch.float32, device=x.device)
    _bwd_tile[(programs,)](x, dy, dx, w, mean, rstd, pw, pb, m, n,
                           BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    dw = torch.empty_like(w)
    db = torch.empty_like(w)
    sum_n = min(block_n, 256)
    _sum_partials[(triton.cdiv(n, sum_n),)](pw, pb, dw, db, programs, n,
                                            BLOCK_P=32, BLOCK_N=sum_n, num_warps=4)
    return dx, dw, db
