#!/usr/bin/env python3
"""Generate warpnorm's anchor fixtures by running the reference frameworks.

Run it through `bash scripts/gen_fixtures.sh`, which sets up a pinned virtual environment and
the environment variables this script needs (KERAS_BACKEND=jax, and
XLA_FLAGS=--xla_force_host_platform_device_count=8 so that jax.pmap sees 8 CPU devices).

Every case runs the real library on CPU JAX:
  * flax.linen.LayerNorm and flax.linen.RMSNorm (module.apply with the given parameters),
  * keras.layers.LayerNormalization (keras 3, JAX backend; gamma/beta assigned after build,
    gradients through Layer.stateless_call),
  * flax.linen.LayerNorm / RMSNorm under jax.pmap (sharded cases, "world": k).
Gradients are jax.vjp of the layer output with respect to x and the parameters, with a random
cotangent dy. For sharded cases the vjp is taken inside the pmapped per-rank function, with the
collective inside it (the transpose of lax.pmean is lax.pmean, so each rank's dx/dscale/dbias is
the gradient of the loss summed over all ranks).

Output: one JSON file per case in tests/fixtures/, in the format of the project's fixture spec:
name, api, config (the API's own argument names; absent keys take the API's defaults), optional
world, x, scale, bias, y, dy, dx, dscale, dbias, versions. Each array is
{"shape": [...], "dtype": "float32"|"float16"|"bfloat16", "data": [...]}, row-major, every value
the exact value of the stored dtype written as a JSON number (float64 conversion).

EXTENSION -- "mask": cases whose name contains "mask" carry an extra top-level field
    "mask": {"shape": [...], "dtype": "bool", "data": [true, false, ...]}
which is the `mask` argument of flax's __call__(x, mask=...): a boolean array broadcastable to
x that selects which elements enter the mean/variance. It does not mask the output: every
element of y is normalised with the statistics of the selected elements of its row.

The data are deterministic (one numpy Generator per case, seeded from a fixed seed and the case
name), so reruns reproduce the same files. Before writing anything the script checks every case
against an independent float64 numpy reference (forward and backward), and checks every sharded
case against the unsharded flax layer applied to each group's concatenated features; any mismatch
aborts the run.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import glob
import json
import sys
import warnings
import zlib
from importlib import metadata

# keras warns on every call that rms_scaling is deprecated; the cases use it on purpose.
warnings.filterwarnings("ignore", message=".*rms_scaling.*")

import numpy as np
import ml_dtypes
import jax
import jax.numpy as jnp
import flax.linen as nn
from flax.linen import dtypes as flax_dtypes
import keras

SEED = 20240607
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# Tolerances of the float64 self-check, by the least precise dtype a case involves.
TOL = {"float32": 3e-4, "float16": 4e-3, "bfloat16": 3e-2}
PRECISION_ORDER = ["float32", "float16", "bfloat16"]

API_FLAX_LN = "flax.linen.LayerNorm"
API_FLAX_RMS = "flax.linen.RMSNorm"
API_KERAS_LN = "keras.layers.LayerNormalization"

FLAX_DEFAULTS = dict(
    epsilon=1e-6,
    dtype=None,
    param_dtype="float32",
    use_bias=True,
    use_scale=True,
    reduction_axes=-1,
    feature_axes=-1,
    axis_name=None,
    axis_index_groups=None,
    use_fast_variance=True,
)
KERAS_DEFAULTS = dict(
    axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False, dtype="float32"
)

# Keras policies: (variable dtype, compute dtype).
KERAS_POLICIES = {
    "float32": ("float32", "float32"),
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "mixed_float16": ("float32", "float16"),
    "mixed_bfloat16": ("float32", "bfloat16"),
}


class FixtureError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Helpers


def dtype_name(a):
    name = str(np.asarray(a).dtype) if not hasattr(a, "dtype") else str(a.dtype)
    if name not in DTYPES:
        raise FixtureError(f"unexpected dtype {name}")
    return name


def enc(a):
    """An array as the fixture's {"shape", "dtype", "data"} object (exact stored values)."""
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return {"shape": list(a.shape), "dtype": "bool", "data": [bool(v) for v in a.ravel()]}
    name = dtype_name(a)
    data = a.astype(np.float64).ravel()
    if not np.all(np.isfinite(data)):
        raise FixtureError("non-finite value in an array")
    return {"shape": list(a.shape), "dtype": name, "data": [float(v) for v in data]}


def case_rng(name):
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def rounded(values, dtype):
    """float64 values rounded to `dtype` (a numpy array of that dtype)."""
    return np.asarray(values, np.float32).astype(DTYPES[dtype])


def make_x(rng, shape, dtype, mean=2.5, std=1.5):
    return rounded(rng.normal(mean, std, size=shape), dtype)


def make_scale(rng, shape, dtype):
    return rounded(rng.normal(1.0, 0.5, size=shape), dtype)


def make_bias(rng, shape, dtype):
    return rounded(rng.normal(0.0, 0.5, size=shape), dtype)


def make_dy(rng, shape, dtype):
    return rounded(rng.normal(0.0, 1.0, size=shape), dtype)


def canon_axes(rank, axes):
    """Like flax's _canonicalize_axes: positive, deduplicated (ascending for small ranks)."""
    if isinstance(axes, int):
        axes = (axes,)
    return tuple({rank + a if a < 0 else a for a in axes})


def loosest(*dtypes):
    names = [d for d in dtypes if d is not None]
    return max(names, key=PRECISION_ORDER.index)


def check_close(case, what, got, want, tol):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise FixtureError(f"{case}: {what} shape {got.shape} != reference {want.shape}")
    if not np.all(np.isfinite(got)):
        raise FixtureError(f"{case}: {what} is not finite")
    scale = max(float(np.sqrt(np.mean(want**2))), 1e-6)
    err = np.abs(got - want)
    bound = tol * (np.abs(want) + scale)
    if np.any(err > bound):
        i = int(np.argmax(err / bound))
        raise FixtureError(
            f"{case}: {what} differs from the float64 reference: max err {err.max():.3g} "
            f"(at flat {i}: got {got.ravel()[i]!r}, want {want.ravel()[i]!r}, tol {tol})"
        )


# --------------------------------------------------------------------------------------------
# Independent float64 reference (forward and backward)


def reference(x, dy, scale, bias, red_axes, param_bshape, eps, mode, mask=None):
    """float64 reference of y, dx, dscale, dbias.

    mode: "ln" (centred, (x - mean) * rstd), "rms" (no centring, mean of x^2) or
    "keras_rms" (keras rms_scaling: x * rsqrt(centred variance + eps), x itself not centred).
    param_bshape: the shape (broadcastable to x) that scale/bias are reshaped to.
    """
    x = np.asarray(x, np.float64)
    g_out = np.asarray(dy, np.float64)
    m = np.ones(x.shape) if mask is None else np.broadcast_to(np.asarray(mask, np.float64), x.shape)
    red = tuple(red_axes)
    cnt = np.sum(m, axis=red, keepdims=True)
    s = None if scale is None else np.asarray(scale, np.float64).reshape(param_bshape)
    b = None if bias is None else np.asarray(bias, np.float64).reshape(param_bshape)
    if mode == "rms":
        mu = np.zeros_like(cnt)
    else:
        mu = np.sum(x * m, axis=red, keepdims=True) / cnt
    if mode == "rms":
        var = np.sum(x * x * m, axis=red, keepdims=True) / cnt
    else:
        var = np.sum((x - mu) ** 2 * m, axis=red, keepdims=True) / cnt
    r = 1.0 / np.sqrt(var + eps)
    base = x if mode == "keras_rms" else (x - mu)
    xhat = base * r
    y = xhat * (1.0 if s is None else s) + (0.0 if b is None else b)
    g = g_out * (1.0 if s is None else s)
    # dy/dx_j through the statistics; sums over the whole reduction set (every element of the
    # row depends on the statistics), derivatives of the statistics only at selected elements.
    if mode == "ln":
        sg = np.sum(g, axis=red, keepdims=True)
        sgx = np.sum(g * xhat, axis=red, keepdims=True)
        dx = r * g - m * r / cnt * (sg + xhat * sgx)
    elif mode == "rms":
        sgx = np.sum(g * x, axis=red, keepdims=True)
        dx = r * g - m * r**3 / cnt * x * sgx
    elif mode == "keras_rms":
        sgx = np.sum(g * x, axis=red, keepdims=True)
        dx = r * g - m * r**3 / cnt * (x - mu) * sgx
    else:
        raise ValueError(mode)
    non_feat = tuple(i for i, n in enumerate(param_bshape) if n == 1 and x.shape[i] != 1)
    out = {"y": y, "dx": dx}
    pshape = None
    if scale is not None:
        pshape = np.asarray(scale).shape
        out["dscale"] = np.sum(g_out * xhat, axis=non_feat).reshape(pshape)
    if bias is not None:
        pshape = np.asarray(bias).shape
        out["dbias"] = np.sum(g_out, axis=non_feat).reshape(pshape)
    return out


def param_bshape_flax(xshape, feature_axes):
    fa = canon_axes(len(xshape), feature_axes)
    shape = [1] * len(xshape)
    for a in fa:
        shape[a] = xshape[a]
    return shape, [xshape[a] for a in fa]


def param_bshape_keras(xshape, axis):
    axis = sorted([axis] if isinstance(axis, int) else list(axis))
    bshape = [1] * len(xshape)
    for a in axis:
        bshape[a] = xshape[a]
    return bshape, [xshape[a] for a in axis]


# --------------------------------------------------------------------------------------------
# Runners


def flax_module(api, config):
    kw = {}
    for k, v in config.items():
        if k in ("dtype", "param_dtype") and v is not None:
            v = jnp.dtype(v)
        if isinstance(v, list) and k in ("reduction_axes", "feature_axes"):
            v = tuple(v)
        kw[k] = v
    cls = nn.LayerNorm if api == API_FLAX_LN else nn.RMSNorm
    return cls(**kw)


def flax_param_names(api, config):
    full = {**FLAX_DEFAULTS, **config}
    names = []
    if full["use_scale"]:
        names.append("scale")
    if api == API_FLAX_LN and full["use_bias"]:
        names.append("bias")
    return names


def flax_fixture(name, api, config, x, mask, params, y, dy, dx, dp, world=None):
    """A flax case's fields: inputs, outputs and the vjp's gradients (dp: of the params)."""
    return {
        "name": name,
        "api": api,
        "config": config,
        "world": world,
        "x": x,
        "mask": mask,
        "scale": params.get("scale"),
        "bias": params.get("bias"),
        "y": np.asarray(y),
        "dy": dy,
        "dx": np.asarray(dx),
        "dscale": None if "scale" not in dp else np.asarray(dp["scale"]),
        "dbias": None if "bias" not in dp else np.asarray(dp["bias"]),
    }


def run_flax(name, api, config, xshape, xdtype, mask=None, x_mean=2.5, x_std=1.5):
    rng = case_rng(name)
    full = {**FLAX_DEFAULTS, **config}
    module = flax_module(api, config)
    x = make_x(rng, xshape, xdtype, x_mean, x_std)
    bshape, pshape = param_bshape_flax(xshape, full["feature_axes"])
    pdt = full["param_dtype"]
    params = {}
    names = flax_param_names(api, config)
    if "scale" in names:
        params["scale"] = make_scale(rng, pshape, pdt)
    if "bias" in names:
        params["bias"] = make_bias(rng, pshape, pdt)

    # The module's own parameter shapes/dtypes must be the ones we made.
    init = module.init(jax.random.key(0), jnp.asarray(x), mask=None if mask is None else jnp.asarray(mask))
    init_p = init.get("params", {})
    if sorted(init_p) != sorted(params):
        raise FixtureError(f"{name}: flax params {sorted(init_p)} != expected {sorted(params)}")
    for k, v in init_p.items():
        if tuple(v.shape) != tuple(params[k].shape) or str(v.dtype) != str(params[k].dtype):
            raise FixtureError(f"{name}: flax param {k} is {v.shape} {v.dtype}")

    jmask = None if mask is None else jnp.asarray(mask)

    def f(xx, pp):
        return module.apply({"params": pp}, xx, mask=jmask)

    jparams = {k: jnp.asarray(v) for k, v in params.items()}
    y, vjp = jax.vjp(f, jnp.asarray(x), jparams)
    dy = make_dy(rng, y.shape, str(y.dtype))
    dx, dp = vjp(jnp.asarray(dy))
    fx = flax_fixture(name, api, config, x, mask, params, y, dy, dx, dp)
    mode = "ln" if api == API_FLAX_LN else "rms"
    red = canon_axes(len(xshape), full["reduction_axes"])
    ref = reference(x, dy, fx["scale"], fx["bias"], red, bshape, full["epsilon"], mode, mask)
    tol = TOL[loosest(xdtype, str(y.dtype), pdt if params else None, full["dtype"])]
    for k, v in ref.items():
        check_close(name, k, fx[k], v, tol)
    return fx


def run_keras(name, config, xshape, xdtype, x_mean=2.5, x_std=1.5):
    rng = case_rng(name)
    full = {**KERAS_DEFAULTS, **config}
    vdt, cdt = KERAS_POLICIES[full["dtype"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rms_scaling is deprecated and warns
        layer = keras.layers.LayerNormalization(**config)
    x = make_x(rng, xshape, xdtype, x_mean, x_std)
    layer.build(x.shape)
    bshape, pshape = param_bshape_keras(xshape, full["axis"])
    values = {}
    if layer.gamma is not None:
        values["gamma"] = make_scale(rng, tuple(layer.gamma.shape), vdt)
    if layer.beta is not None:
        values["beta"] = make_bias(rng, tuple(layer.beta.shape), vdt)
    for k, v in values.items():
        var = getattr(layer, k)
        if str(var.dtype) != vdt:
            raise FixtureError(f"{name}: keras {k} dtype {var.dtype} != {vdt}")
        var.assign(v)
    tvars = layer.trainable_variables
    order = [v.name for v in tvars]
    if sorted(order) != sorted(values):
        raise FixtureError(f"{name}: keras variables {order} != {sorted(values)}")
    y_call = np.asarray(layer(jnp.asarray(x)))

    def f(xx, *pv):
        out, _ = layer.stateless_call(list(pv), [], xx)
        return out

    pvals = [jnp.asarray(values[n]) for n in order]
    y, vjp = jax.vjp(f, jnp.asarray(x), *pvals)
    if str(y.dtype) != str(y_call.dtype) or not np.array_equal(
        np.asarray(y, np.float64), np.asarray(y_call, np.float64)
    ):
        raise FixtureError(f"{name}: stateless_call differs from layer call")
    dy = make_dy(rng, y.shape, str(y.dtype))
    grads = vjp(jnp.asarray(dy))
    dx, dps = grads[0], dict(zip(order, grads[1:]))
    fx = {
        "name": name,
        "api": API_KERAS_LN,
        "config": config,
        "x": x,
        "scale": values.get("gamma"),
        "bias": values.get("beta"),
        "y": np.asarray(y),
        "dy": dy,
        "dx": np.asarray(dx),
        "dscale": None if "gamma" not in dps else np.asarray(dps["gamma"]),
        "dbias": None if "beta" not in dps else np.asarray(dps["beta"]),
    }
    mode = "keras_rms" if full["rms_scaling"] else "ln"
    red = [a % len(xshape) for a in ([full["axis"]] if isinstance(full["axis"], int) else full["axis"])]
    ref = reference(x, dy, fx["scale"], fx["bias"], red, bshape, full["epsilon"], mode)
    tol = TOL[loosest(xdtype, str(y.dtype), vdt, cdt)]
    for k, v in ref.items():
        check_close(name, k, fx[k], v, tol)
    return fx


def weighted_reference(x, dy, scale, bias, w, eps, mode):
    """float64 y, dx, dscale, dbias of rows [rows, D] whose statistics weigh element j by
    w[:, j] (weights of a row sum to 1): mean = sum(w x), var = sum(w (x - mean)^2) ("ln") or
    sum(w x^2) ("rms"). A masked row sharded over k ranks has w = m / (k * n_rank), which is
    flax's pmean of each rank's mean(where=mask)."""
    x = np.asarray(x, np.float64)
    g_out = np.asarray(dy, np.float64)
    s = 1.0 if scale is None else np.asarray(scale, np.float64)
    b = 0.0 if bias is None else np.asarray(bias, np.float64)
    mu = np.zeros((x.shape[0], 1)) if mode == "rms" else np.sum(w * x, axis=1, keepdims=True)
    var = np.sum(w * (x - mu) ** 2, axis=1, keepdims=True)
    r = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * r
    g = g_out * s
    sg = np.sum(g, axis=1, keepdims=True) if mode == "ln" else 0.0
    dx = r * g - r * w * (sg + xhat * np.sum(g * xhat, axis=1, keepdims=True))
    out = {"y": xhat * s + b, "dx": dx}
    if scale is not None:
        out["dscale"] = np.sum(g_out * xhat, axis=0)
    if bias is not None:
        out["dbias"] = np.sum(g_out, axis=0)
    return out


def run_sharded(name, api, config, world, rows, feat_per_rank, xdtype, mask=None):
    """flax LayerNorm/RMSNorm under jax.pmap; rank r holds features [r*F, (r+1)*F) of each row.
    `mask` ([world, rows, F] bool) is flax's `mask` argument on each rank."""
    if mask is not None and mask.shape != (world, rows, feat_per_rank):
        raise FixtureError(f"{name}: mask shape {mask.shape}")
    if jax.device_count() < world:
        raise FixtureError(f"{name}: needs {world} devices, have {jax.device_count()}")
    rng = case_rng(name)
    full = {**FLAX_DEFAULTS, **config}
    module = flax_module(api, config)
    pdt = full["param_dtype"]
    x = make_x(rng, (world, rows, feat_per_rank), xdtype)
    names = flax_param_names(api, config)
    params = {}
    if "scale" in names:
        params["scale"] = make_scale(rng, (world, feat_per_rank), pdt)
    if "bias" in names:
        params["bias"] = make_bias(rng, (world, feat_per_rank), pdt)
    # dy's dtype is the output dtype; find it from an unsharded call of the same layer
    ydt = flax_dtypes.canonicalize_dtype(
        jnp.zeros((), xdtype), *[jnp.zeros((), pdt) for _ in params], dtype=full["dtype"]
    )
    dy = make_dy(rng, (world, rows, feat_per_rank), str(jnp.dtype(ydt)))

    def per_rank(xx, pp, dd, mm):
        y, vjp = jax.vjp(lambda a, b: module.apply({"params": b}, a, mask=mm), xx, pp)
        dx, dp = vjp(dd)
        return y, dx, dp

    jp = {k: jnp.asarray(v) for k, v in params.items()}
    jm = None if mask is None else jnp.asarray(mask)  # None: flax's unmasked path
    y, dx, dp = jax.pmap(per_rank, axis_name=full["axis_name"], devices=jax.devices()[:world])(
        jnp.asarray(x), jp, jnp.asarray(dy), jm
    )
    fx = flax_fixture(name, api, config, x, mask, params, y, dy, dx, dp, world=world)
    if str(fx["y"].dtype) != str(jnp.dtype(ydt)):
        raise FixtureError(f"{name}: sharded y dtype {fx['y'].dtype} != {ydt}")

    # Self-check: each group equals the unsharded layer (no axis_name) on the group's features
    # concatenated in rank order, and the float64 reference of that.
    groups = full["axis_index_groups"] or [list(range(world))]
    if sorted(r for g in groups for r in g) != list(range(world)):
        raise FixtureError(f"{name}: groups do not partition the ranks")
    plain_cfg = {k: v for k, v in config.items() if k not in ("axis_name", "axis_index_groups")}
    plain = flax_module(api, plain_cfg)
    mode = "ln" if api == API_FLAX_LN else "rms"
    tol = TOL[loosest(xdtype, str(fx["y"].dtype), pdt if params else None, full["dtype"])]
    for g in groups:
        cat = lambda a: np.concatenate([a[r] for r in g], axis=-1)
        xg, dyg = cat(x), cat(dy)
        pg = {k: cat(v) for k, v in params.items()}
        if mask is not None:
            # Each rank's selected elements weigh 1 / (k * its count): pmean of local means.
            counts = [mask[r].sum(axis=-1, keepdims=True) for r in g]
            wg = np.concatenate([mask[r] / (len(g) * c) for r, c in zip(g, counts)], axis=-1)
            ref = weighted_reference(xg, dyg, pg.get("scale"), pg.get("bias"), wg,
                                     full["epsilon"], mode)
            got = {"y": cat(fx["y"]), "dx": cat(fx["dx"])}
            for k in params:
                got["d" + k] = cat(fx["d" + k])
            for k, v in ref.items():
                check_close(name, f"{k} vs float64 weighted reference (group {g})", got[k], v, tol)
            continue
        yg, vjp = jax.vjp(lambda a, b: plain.apply({"params": b}, a), jnp.asarray(xg),
                          {k: jnp.asarray(v) for k, v in pg.items()})
        dxg, dpg = vjp(jnp.asarray(dyg))
        got = {"y": cat(fx["y"]), "dx": cat(fx["dx"])}
        want = {"y": np.asarray(yg), "dx": np.asarray(dxg)}
        for k in params:
            got["d" + k] = cat(fx["d" + k])
            want["d" + k] = np.asarray(dpg[k])
        for k in want:
            check_close(name, f"{k} vs unsharded flax (group {g})", got[k], want[k], tol)
        ref = reference(xg, dyg, pg.get("scale"), pg.get("bias"), (1,),
                        [1, xg.shape[1]], full["epsilon"], mode)
        for k, v in ref.items():
            check_close(name, f"{k} vs float64 reference (group {g})", got[k], v, tol)
    return fx


# --------------------------------------------------------------------------------------------
# Cases

CASES = []  # (name, description, thunk)


def case(name, desc, fn, *args, **kw):
    CASES.append((name, desc, lambda: fn(name, *args, **kw)))


def flax_ln(name, desc, config, xshape, xdtype="float32", **kw):
    case(name, desc, run_flax, API_FLAX_LN, config, xshape, xdtype, **kw)


def flax_rms(name, desc, config, xshape, xdtype="float32", **kw):
    case(name, desc, run_flax, API_FLAX_RMS, config, xshape, xdtype, **kw)


def keras_ln(name, desc, config, xshape, xdtype="float32", **kw):
    case(name, desc, run_keras, config, xshape, xdtype, **kw)


def sharded(name, desc, api, config, world, rows, fpr, xdtype="float32", mask=None):
    case(name, desc, run_sharded, api, config, world, rows, fpr, xdtype, mask=mask)


def shard_mask(world, rows, fpr):
    """Per rank and row a different number of selected features (1 to all), so the ranks'
    counts differ within a row: flax's pmean of local means then differs from the mean over
    the whole row's selected elements."""
    m = np.zeros((world, rows, fpr), bool)
    for r in range(world):
        for i in range(rows):
            count = 1 + (3 * r + 5 * i) % fpr
            m[r, i, (np.arange(count) * 7 + i) % fpr] = True
    return m


def row_mask(rows, d):
    """Rows: all selected, first 10 selected, every other one, only 3 selected (then repeat)."""
    m = np.zeros((rows, d), bool)
    for i in range(rows):
        kind = i % 4
        if kind == 0:
            m[i] = True
        elif kind == 1:
            m[i, :10] = True
        elif kind == 2:
            m[i, ::2] = True
        else:
            m[i, [1, 5, d - 2]] = True
    return m


# flax.linen.LayerNorm -----------------------------------------------------------------------
flax_ln("flax_ln_default_d32", "defaults (eps 1e-6, fast variance, axes -1), x f32 [4,32]",
        {}, (4, 32))
flax_ln("flax_ln_default_3d_d33", "defaults, rank-3 x f32 [2,3,33]", {}, (2, 3, 33))
flax_ln("flax_ln_d3", "defaults, tiny rows, x f32 [5,3]", {}, (5, 3))
flax_ln("flax_ln_d7", "defaults, x f32 [6,7]", {}, (6, 7))
flax_ln("flax_ln_d1024", "defaults, x f32 [2,1024]", {}, (2, 1024))
flax_ln("flax_ln_slow_variance_d100", "use_fast_variance False, x f32 [3,100]",
        {"use_fast_variance": False}, (3, 100))
flax_ln("flax_ln_eps_1e-2_d7", "epsilon 1e-2, x f32 [4,7] with std 0.1 (eps matters)",
        {"epsilon": 1e-2}, (4, 7), x_mean=0.5, x_std=0.1)
flax_ln("flax_ln_eps_1e-5_d257", "epsilon 1e-5, x f32 [2,257] mean 0.02 std 0.01 (eps matters)",
        {"epsilon": 1e-5}, (2, 257), x_mean=0.02, x_std=0.01)
flax_ln("flax_ln_slow_variance_offset_d257",
        "use_fast_variance False, x f32 [2,257] mean 300 std 0.5 (fast variance would cancel)",
        {"use_fast_variance": False}, (2, 257), x_mean=300.0, x_std=0.5)
flax_ln("flax_ln_no_bias_d33", "use_bias False, x f32 [3,33]", {"use_bias": False}, (3, 33))
flax_ln("flax_ln_no_scale_d33", "use_scale False, x f32 [3,33]", {"use_scale": False}, (3, 33))
flax_ln("flax_ln_no_scale_no_bias_d33", "use_scale and use_bias False, x f32 [3,33]",
        {"use_scale": False, "use_bias": False}, (3, 33))
flax_ln("flax_ln_red12_feat_last", "reduction_axes (1,2), feature_axes -1: param [8], x f32 [2,4,8]",
        {"reduction_axes": [1, 2], "feature_axes": -1}, (2, 4, 8))
flax_ln("flax_ln_red12_feat12", "reduction_axes (1,2), feature_axes (1,2): param [4,8], x f32 [2,4,8]",
        {"reduction_axes": [1, 2], "feature_axes": [1, 2]}, (2, 4, 8))
flax_ln("flax_ln_red12_feat21",
        "reduction_axes (1,2), feature_axes (2,1): flax sorts, param [4,8], x f32 [2,4,8]",
        {"reduction_axes": [1, 2], "feature_axes": [2, 1]}, (2, 4, 8))
flax_ln("flax_ln_feat_outside_red",
        "reduction_axes -1, feature_axes (-2,): param [5] broadcast over rows, x f32 [2,5,7]",
        {"reduction_axes": -1, "feature_axes": [-2]}, (2, 5, 7))
flax_ln("flax_ln_red_neg_dup", "reduction_axes (-1,2) on rank 3 (dedups to 2), x f32 [2,3,16]",
        {"reduction_axes": [-1, 2]}, (2, 3, 16))
flax_ln("flax_ln_channels_first",
        "reduction_axes 1, feature_axes 1 on [N,C,S] (non-innermost), x f32 [2,16,5]",
        {"reduction_axes": 1, "feature_axes": 1}, (2, 16, 5))
flax_ln("flax_ln_x_bf16_params_f32", "x bf16, param_dtype f32 (default) -> y f32, [4,64]",
        {}, (4, 64), "bfloat16")
flax_ln("flax_ln_x_f16_dtype_f16", "x f16, dtype f16, params f32 -> y f16, [4,64]",
        {"dtype": "float16"}, (4, 64), "float16")
flax_ln("flax_ln_x_bf16_dtype_bf16_params_bf16", "x bf16, dtype bf16, param_dtype bf16 -> y bf16, [4,64]",
        {"dtype": "bfloat16", "param_dtype": "bfloat16"}, (4, 64), "bfloat16")
flax_ln("flax_ln_x_f32_dtype_bf16", "x f32, dtype bf16, params f32 -> y bf16, [4,64]",
        {"dtype": "bfloat16"}, (4, 64))
flax_ln("flax_ln_x_bf16_no_params", "x bf16, use_scale/use_bias False -> y bf16, [4,64]",
        {"use_scale": False, "use_bias": False}, (4, 64), "bfloat16")
flax_ln("flax_ln_x_f16_params_bf16", "x f16, param_dtype bf16 -> y f32 (f16+bf16 promote), [4,64]",
        {"param_dtype": "bfloat16"}, (4, 64), "float16")
flax_ln("flax_ln_mask_rows_partial",
        "EXTENSION mask [8,16] (rows fully / partially selected), defaults, x f32 [8,16]",
        {}, (8, 16), mask=row_mask(8, 16))
flax_ln("flax_ln_mask_slow_variance",
        "EXTENSION mask [6,16], use_fast_variance False, x f32 [6,16]",
        {"use_fast_variance": False}, (6, 16), mask=row_mask(6, 16))

# flax.linen.RMSNorm -------------------------------------------------------------------------
flax_rms("flax_rms_default_d32", "RMSNorm defaults (eps 1e-6, axes -1), x f32 [4,32]", {}, (4, 32))
flax_rms("flax_rms_d257", "RMSNorm defaults, x f32 [2,257]", {}, (2, 257))
flax_rms("flax_rms_no_scale", "RMSNorm use_scale False, x f32 [3,33]", {"use_scale": False}, (3, 33))
flax_rms("flax_rms_x_bf16_params_f32", "RMSNorm x bf16, params f32 -> y f32, [4,64]",
         {}, (4, 64), "bfloat16")
flax_rms("flax_rms_red12", "RMSNorm reduction_axes (1,2), feature_axes -1, x f32 [2,4,8]",
         {"reduction_axes": [1, 2]}, (2, 4, 8))
flax_rms("flax_rms_mask_rows_partial", "EXTENSION mask [8,16], RMSNorm defaults, x f32 [8,16]",
         {}, (8, 16), mask=row_mask(8, 16))

# keras.layers.LayerNormalization ------------------------------------------------------------
keras_ln("keras_ln_default_d32", "defaults (axis -1, eps 1e-3), x f32 [4,32]", {}, (4, 32))
keras_ln("keras_ln_d1024", "defaults, x f32 [2,1024]", {}, (2, 1024))
keras_ln("keras_ln_eps_1e-5_d100", "epsilon 1e-5, x f32 [3,100] std 0.01",
         {"epsilon": 1e-5}, (3, 100), x_mean=1.0, x_std=0.01)
keras_ln("keras_ln_axis_12", "axis [1,2], gamma [4,8], x f32 [2,4,8]", {"axis": [1, 2]}, (2, 4, 8))
keras_ln("keras_ln_axis_1_rank3", "axis 1 (not innermost), gamma [16], x f32 [2,16,5]",
         {"axis": 1}, (2, 16, 5))
keras_ln("keras_ln_axis_neg", "axis [-2,-1], gamma [4,8], x f32 [2,4,8]", {"axis": [-2, -1]}, (2, 4, 8))
keras_ln("keras_ln_axis_21", "axis [2,1] (keras sorts), gamma [4,8], x f32 [2,4,8]",
         {"axis": [2, 1]}, (2, 4, 8))
keras_ln("keras_ln_axis_mixed_sign_quirk",
         "axis [1,-1]: keras sorts raw values to [-1,1], gamma shape [5,3] RESHAPED (not transposed) "
         "to [1,3,5], x f32 [2,3,5]",
         {"axis": [1, -1]}, (2, 3, 5))
keras_ln("keras_ln_no_center", "center False (no beta), x f32 [3,33]", {"center": False}, (3, 33))
keras_ln("keras_ln_no_scale", "scale False (no gamma), x f32 [3,33]", {"scale": False}, (3, 33))
keras_ln("keras_ln_no_center_no_scale", "center and scale False, x f32 [3,33]",
         {"center": False, "scale": False}, (3, 33))
keras_ln("keras_ln_rms_scaling", "rms_scaling True: x*rsqrt(centred var+eps)*gamma, no beta, x f32 [4,32]",
         {"rms_scaling": True}, (4, 32))
keras_ln("keras_ln_rms_scaling_no_scale", "rms_scaling True with scale False: gamma still used, [4,32]",
         {"rms_scaling": True, "scale": False}, (4, 32))
keras_ln("keras_ln_mixed_bfloat16_x_f32", "policy mixed_bfloat16, x f32, vars f32 -> y bf16, [4,64]",
         {"dtype": "mixed_bfloat16"}, (4, 64))
keras_ln("keras_ln_mixed_bfloat16_x_bf16", "policy mixed_bfloat16, x bf16, vars f32 -> y bf16, [4,64]",
         {"dtype": "mixed_bfloat16"}, (4, 64), "bfloat16")
keras_ln("keras_ln_mixed_float16_x_f16", "policy mixed_float16, x f16, vars f32 -> y f16, [4,64]",
         {"dtype": "mixed_float16"}, (4, 64), "float16")
keras_ln("keras_ln_float16_x_f16", "policy float16, x f16, vars f16 -> y f16, [4,64]",
         {"dtype": "float16"}, (4, 64), "float16")
keras_ln("keras_ln_bfloat16_x_bf16", "policy bfloat16, x bf16, vars bf16 -> y bf16, [4,64]",
         {"dtype": "bfloat16"}, (4, 64), "bfloat16")
keras_ln("keras_ln_float32_x_f16",
         "policy float32, x f16 (not autocast) -> y f32 holding f16-rounded values, [4,64]",
         {}, (4, 64), "float16")

# Sharded: flax under jax.pmap, axis_name "i" ------------------------------------------------
sharded("flax_ln_sharded_w2", "LayerNorm world 2, groups null, x f32 [2,3,32] (D 64)",
        API_FLAX_LN, {"axis_name": "i"}, 2, 3, 32)
sharded("flax_ln_sharded_w4", "LayerNorm world 4, groups null, x f32 [4,3,16] (D 64)",
        API_FLAX_LN, {"axis_name": "i"}, 4, 3, 16)
sharded("flax_ln_sharded_w8", "LayerNorm world 8, groups null, x f32 [8,3,8] (D 64)",
        API_FLAX_LN, {"axis_name": "i"}, 8, 3, 8)
sharded("flax_ln_sharded_w4_slow_variance", "LayerNorm world 4, use_fast_variance False, x f32 [4,3,16]",
        API_FLAX_LN, {"axis_name": "i", "use_fast_variance": False}, 4, 3, 16)
sharded("flax_ln_sharded_w8_groups_halves",
        "LayerNorm world 8, groups [[0,1,2,3],[4,5,6,7]], x f32 [8,3,8]",
        API_FLAX_LN, {"axis_name": "i", "axis_index_groups": [[0, 1, 2, 3], [4, 5, 6, 7]]}, 8, 3, 8)
sharded("flax_ln_sharded_w8_groups_halves_slow_variance",
        "LayerNorm world 8, groups [[0,1,2,3],[4,5,6,7]], use_fast_variance False, x f32 [8,3,8]",
        API_FLAX_LN, {"axis_name": "i", "axis_index_groups": [[0, 1, 2, 3], [4, 5, 6, 7]],
                      "use_fast_variance": False}, 8, 3, 8)
sharded("flax_ln_sharded_w8_groups_strided",
        "LayerNorm world 8, groups [[0,4],[1,5],[2,6],[3,7]], x f32 [8,3,8]",
        API_FLAX_LN, {"axis_name": "i", "axis_index_groups": [[0, 4], [1, 5], [2, 6], [3, 7]]}, 8, 3, 8)
sharded("flax_ln_sharded_w4_groups_pairs", "LayerNorm world 4, groups [[0,1],[2,3]], x f32 [4,3,16]",
        API_FLAX_LN, {"axis_name": "i", "axis_index_groups": [[0, 1], [2, 3]]}, 4, 3, 16)
sharded("flax_ln_sharded_w4_x_bf16", "LayerNorm world 4, x bf16, params f32 -> y f32, [4,3,16]",
        API_FLAX_LN, {"axis_name": "i"}, 4, 3, 16, "bfloat16")
sharded("flax_ln_sharded_w2_d7", "LayerNorm world 2, odd shard width, x f32 [2,4,7] (D 14)",
        API_FLAX_LN, {"axis_name": "i"}, 2, 4, 7)
sharded("flax_rms_sharded_w4", "RMSNorm world 4, groups null, x f32 [4,3,16]",
        API_FLAX_RMS, {"axis_name": "i"}, 4, 3, 16)
sharded("flax_rms_sharded_w4_groups_pairs", "RMSNorm world 4, groups [[0,1],[2,3]], x f32 [4,3,16]",
        API_FLAX_RMS, {"axis_name": "i", "axis_index_groups": [[0, 1], [2, 3]]}, 4, 3, 16)
sharded("flax_ln_sharded_w4_mask", "EXTENSION mask, LayerNorm world 4, unequal counts per rank, x f32 [4,5,16]",
        API_FLAX_LN, {"axis_name": "i"}, 4, 5, 16, mask=shard_mask(4, 5, 16))
sharded("flax_ln_sharded_w4_mask_slow_variance",
        "EXTENSION mask, LayerNorm world 4, use_fast_variance False, unequal counts, x f32 [4,5,16]",
        API_FLAX_LN, {"axis_name": "i", "use_fast_variance": False}, 4, 5, 16, mask=shard_mask(4, 5, 16))
sharded("flax_ln_sharded_w8_groups_halves_mask",
        "EXTENSION mask, LayerNorm world 8, groups [[0,1,2,3],[4,5,6,7]], x f32 [8,3,8]",
        API_FLAX_LN, {"axis_name": "i", "axis_index_groups": [[0, 1, 2, 3], [4, 5, 6, 7]]}, 8, 3, 8,
        mask=shard_mask(8, 3, 8))
sharded("flax_rms_sharded_w4_groups_pairs_mask",
        "EXTENSION mask, RMSNorm world 4, groups [[0,1],[2,3]], unequal counts, x f32 [4,5,16]",
        API_FLAX_RMS, {"axis_name": "i", "axis_index_groups": [[0, 1], [2, 3]]}, 4, 5, 16,
        mask=shard_mask(4, 5, 16))


# --------------------------------------------------------------------------------------------


def versions():
    out = {}
    for pkg in ("jax", "jaxlib", "flax", "keras", "numpy", "ml_dtypes"):
        out[pkg] = metadata.version(pkg)
    return out


KEY_ORDER = ["name", "api", "config", "world", "x", "mask", "scale", "bias", "y", "dy", "dx",
             "dscale", "dbias"]


def to_json(fx, vers):
    obj = {}
    for k in KEY_ORDER:
        v = fx.get(k)
        if v is None:
            continue
        if k in ("name", "api", "config", "world"):
            obj[k] = v
        else:
            obj[k] = enc(v)
    obj["versions"] = vers
    # scale/dscale and bias/dbias come together
    for p in ("scale", "bias"):
        if (p in obj) != ("d" + p in obj):
            raise FixtureError(f"{fx['name']}: {p} without d{p} or vice versa")
    for k in ("y", "dy", "dx"):
        if obj[k]["shape"] != obj["x"]["shape"]:
            raise FixtureError(f"{fx['name']}: {k} shape differs from x")
    if obj["dy"]["dtype"] != obj["y"]["dtype"] or obj["dx"]["dtype"] != obj["x"]["dtype"]:
        raise FixtureError(f"{fx['name']}: dy/dx dtypes")
    return json.dumps(obj, separators=(",", ":")) + "\n"


README_HEAD = """\
# Anchor fixtures

Each `*.json` file here is one case: an input, its parameters, the output and the gradients
produced by running a reference framework (flax's `flax.linen.LayerNorm` / `flax.linen.RMSNorm`,
and keras 3's `keras.layers.LayerNormalization` on the JAX backend), all on CPU JAX. warpnorm's
tests compare its CPU reference and its kernels against them.

Regenerate them with

    bash scripts/gen_fixtures.sh

which creates a virtual environment with pinned versions of jax, flax and keras and runs
`scripts/gen_fixtures.py` with 8 host CPU devices (for the `jax.pmap` cases). The data are seeded,
so a rerun reproduces the same files. Before writing, the generator checks every case against an
independent float64 reference (forward and backward) and every sharded case against the unsharded
layer on the concatenated features of each group; it aborts on any mismatch.

## Format

One JSON object per file: `name`, `api`, `config` (the API's own constructor arguments; an absent
key takes the API's default), optional `world`, `x`, `scale`, `bias`, `y`, `dy`, `dx`, `dscale`,
`dbias`, `versions`. Arrays are `{"shape": [...], "dtype": "float32"|"float16"|"bfloat16",
"data": [...]}`, row-major, with every value the exact value of the stored dtype. `dy` is a random
cotangent of `y` (same dtype as `y`); `dx`, `dscale`, `dbias` are `jax.vjp` of the layer with
respect to `x` and the parameters (same dtypes as `x` and the parameters). For keras, `scale` is
`gamma` and `bias` is `beta`, with the variables' own shapes and dtypes.

Sharded cases (`"world": k`, `config.axis_name` set) are flax's layer under `jax.pmap` over k CPU
devices: every array has a leading rank axis of length k; rank r holds its own slice of the
features of each row and its own slice of scale and bias; statistics are combined with
`lax.pmean` over each group of `axis_index_groups` (all ranks when null). The vjp is taken inside
the pmapped function, so each rank's gradients are those of the loss summed over all ranks.

## Extension: `mask`

Cases whose name contains `mask` carry one extra top-level field,
`"mask": {"shape": [...], "dtype": "bool", "data": [true, false, ...]}`: flax's
`__call__(x, mask=...)`, broadcastable to `x`. Only selected elements enter the mean and variance
(`mean(..., where=mask)`); every element of `y`, selected or not, is normalised with those
statistics. In sharded cases the mask has the leading rank axis too, and each rank's
masked mean is averaged over the group by `lax.pmean`: every rank weighs the same whatever its
count of selected elements (so a rank with none makes its group's rows NaN). The generator checks
these against a float64 reference with those weights instead of the unsharded layer.

## Notes on particular cases

- `keras_ln_axis_mixed_sign_quirk` records real keras behaviour: keras sorts the raw `axis`
  values (`[1, -1]` becomes `[-1, 1]`), builds gamma/beta with shape `(x.shape[-1], x.shape[1])`
  and then *reshapes* (does not transpose) them to the broadcast shape `[1, x.shape[1],
  x.shape[-1]]`. Its `scale`/`bias` therefore have shape `[5, 3]` for an `x` of `[2, 3, 5]`.
- Cases with flax's default `use_fast_variance=True` keep the inputs' mean/std ratio moderate, so
  that the E[x^2] - E[x]^2 cancellation stays far below float32 tolerances; the large-offset case
  uses `use_fast_variance=False`.

## Cases

| name | api | description |
| --- | --- | --- |
"""


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    names = [n for n, _, _ in CASES]
    if len(set(names)) != len(names):
        raise FixtureError("duplicate case names")
    vers = versions()
    outputs = {}
    rows = []
    for name, desc, thunk in CASES:
        fx = thunk()
        outputs[name] = to_json(fx, vers)
        rows.append(f"| `{name}` | `{fx['api']}` | {desc} |")
        print(f"ok {name}: x {fx['x'].shape} {fx['x'].dtype} -> y {fx['y'].dtype}", flush=True)
    # Only write once everything passed.
    for path in glob.glob(os.path.join(OUT_DIR, "*.json")):
        if os.path.splitext(os.path.basename(path))[0] not in outputs:
            os.remove(path)
    for name, text in outputs.items():
        with open(os.path.join(OUT_DIR, name + ".json"), "w") as f:
            f.write(text)
    with open(os.path.join(OUT_DIR, "README.md"), "w") as f:
        f.write(README_HEAD + "\n".join(rows) + "\n")
    total = sum(os.path.getsize(os.path.join(OUT_DIR, n + ".json")) for n in outputs)
    print(f"wrote {len(outputs)} fixtures, {total} bytes; versions {vers}")
    if total > 3 * 1024 * 1024:
        raise FixtureError("fixtures exceed 3 MB")


if __name__ == "__main__":
    try:
        main()
    except FixtureError as e:
        print(f"FIXTURE CHECK FAILED: {e}", file=sys.stderr)
        sys.exit(1)
