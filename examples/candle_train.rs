//! Trains a small candle model whose norms are warpnorm's, on synthetic data, with
//! candle's AdamW, and prints the loss as it falls.
//!
//! ```text
//! cargo run --release --features candle --example candle_train
//! cargo run --release --features candle-cuda --example candle_train   # on the first GPU
//! ```
//!
//! Built with `candle-cuda` it trains on the first CUDA device when there is one (else, or
//! with `--cpu`, on the CPU). Options: `--steps N` (default 300), `--batch N`, `--hidden N`,
//! `--norms candle-nn` (the same model with candle-nn's decomposed norms, which train; its
//! fused ones have no backward), and `--compare-candle-nn`: both kinds of norms in turn,
//! with the mean time of a training step's forward and backward for each. On the CPU
//! warpnorm's norms run its f64 reference backend, so times there say nothing about the
//! GPU kernels; the comparison is meant for a GPU, with a realistic size such as
//! `--batch 8192 --hidden 1024`.
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use warpnorm::NormConfig;

const EPS: f64 = 1e-5;
const INPUTS: usize = 16;

#[derive(Clone, Copy, PartialEq)]
enum Norms {
    Warpnorm,
    CandleNn,
}

impl Norms {
    fn label(self) -> &'static str {
        match self {
            Norms::Warpnorm => "warpnorm",
            Norms::CandleNn => "candle-nn (decomposed)",
        }
    }
}

struct Options {
    steps: usize,
    batch: usize,
    hidden: usize,
    cpu: bool,
    norms: Norms,
    compare: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        steps: 300,
        batch: 256,
        hidden: 64,
        cpu: false,
        norms: Norms::Warpnorm,
        compare: false,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> Result<usize> {
        v.and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| candle_core::Error::msg(format!("{flag} takes a positive number")))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--steps" => o.steps = number(args.next(), "--steps")?,
            "--batch" => o.batch = number(args.next(), "--batch")?,
            "--hidden" => o.hidden = number(args.next(), "--hidden")?,
            "--cpu" => o.cpu = true,
            "--compare-candle-nn" => o.compare = true,
            "--norms" => {
                o.norms = match args.next().as_deref() {
                    Some("warpnorm") => Norms::Warpnorm,
                    Some("candle-nn") => Norms::CandleNn,
                    _ => candle_core::bail!("--norms takes warpnorm or candle-nn"),
                }
            }
            other => candle_core::bail!(
                "unknown argument `{other}` (--steps N, --batch N, --hidden N, --cpu, --norms \
                 warpnorm|candle-nn, --compare-candle-nn)"
            ),
        }
    }
    Ok(o)
}

/// One of the model's two norms, either kind.
enum NormLayer {
    Warpnorm(warpnorm::candle::LayerNorm),
    WarpnormRms(warpnorm::candle::RmsNorm),
    /// candle-nn's decomposed forms (differentiable, unlike its fused ops): weight, bias.
    CandleNn(Tensor, Tensor),
    CandleNnRms(candle_nn::RmsNorm),
}

impl Module for NormLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            NormLayer::Warpnorm(n) => n.forward(x),
            NormLayer::WarpnormRms(n) => n.forward(x),
            NormLayer::CandleNn(w, b) => candle_nn::ops::layer_norm_slow(x, w, b, EPS as f32),
            NormLayer::CandleNnRms(n) => n.forward_diff(x),
        }
    }
}

/// linear -> LayerNorm -> gelu -> linear -> RMSNorm -> gelu -> linear.
struct Model {
    input: Linear,
    norm1: NormLayer,
    hidden: Linear,
    norm2: NormLayer,
    output: Linear,
}

impl Model {
    fn new(norms: Norms, h: usize, vb: VarBuilder) -> Result<Model> {
        let (norm1, norm2) = match norms {
            Norms::Warpnorm => {
                let ln = NormConfig::flax().epsilon(EPS).use_fast_variance(false);
                let rms = NormConfig::rms().epsilon(EPS);
                (
                    NormLayer::Warpnorm(warpnorm::candle::layer_norm(h, &ln, vb.pp("norm1"))?),
                    NormLayer::WarpnormRms(warpnorm::candle::rms_norm(h, &rms, vb.pp("norm2"))?),
                )
            }
            Norms::CandleNn => {
                let ln = candle_nn::layer_norm(h, EPS, vb.pp("norm1"))?;
                let bias = ln
                    .bias()
                    .cloned()
                    .ok_or_else(|| candle_core::Error::msg("candle_nn::layer_norm made no bias"))?;
                (
                    NormLayer::CandleNn(ln.weight().clone(), bias),
                    NormLayer::CandleNnRms(candle_nn::rms_norm(h, EPS, vb.pp("norm2"))?),
                )
            }
        };
        Ok(Model {
            input: linear(INPUTS, h, vb.pp("input"))?,
            norm1,
            hidden: linear(h, h, vb.pp("hidden"))?,
            norm2,
            output: linear(h, 1, vb.pp("output"))?,
        })
    }
}

impl Module for Model {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.norm1.forward(&self.input.forward(x)?)?.gelu()?;
        let x = self.norm2.forward(&self.hidden.forward(&x)?)?.gelu()?;
        self.output.forward(&x)
    }
}

/// Inputs and the targets of a fixed random teacher: `sin(x a) . c + (x b)^2 / 4`.
fn synthetic_data(batch: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let x = Tensor::randn(0f32, 1.0, (batch, INPUTS), dev)?;
    let a = Tensor::randn(0f32, 0.5, (INPUTS, 8), dev)?;
    let b = Tensor::randn(0f32, 0.25, (INPUTS, 1), dev)?;
    let c = Tensor::randn(0f32, 1.0, (8, 1), dev)?;
    let y = (x.matmul(&a)?.sin()?.matmul(&c)? + (x.matmul(&b)?.sqr()? / 4.0)?)?;
    Ok((x, y))
}

/// The first CUDA device when built with `candle-cuda` and there is one, else the CPU.
fn device(cpu: bool) -> Result<Device> {
    if cpu || !cfg!(feature = "candle-cuda") {
        return Ok(Device::Cpu);
    }
    Device::new_cuda(0).or_else(|e| {
        println!("no CUDA device ({e}): training on the CPU");
        Ok(Device::Cpu)
    })
}

/// How a training run went.
struct Run {
    first: f32,
    last: f32,
    /// The mean time of a step's forward and backward (the optimizer's update excluded),
    /// from the second step on: the first includes one-time set-up.
    forward_backward: Duration,
}

fn train(o: &Options, norms: Norms, dev: &Device, x: &Tensor, y: &Tensor) -> Result<Run> {
    let varmap = VarMap::new();
    let model = Model::new(
        norms,
        o.hidden,
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
    )?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 3e-3,
            ..Default::default()
        },
    )?;
    println!(
        "training on {dev:?} with {} norms: {} steps, batch {}, hidden {}",
        norms.label(),
        o.steps,
        o.batch,
        o.hidden
    );

    let mut first = None;
    let mut last = f32::NAN;
    let mut timed = Duration::ZERO;
    for step in 0..o.steps {
        let start = Instant::now();
        let pred = model.forward(x)?;
        let loss = (pred - y)?.sqr()?.mean(D::Minus1)?.mean_all()?;
        let grads = loss.backward()?;
        dev.synchronize()?; // the GPU's work, not only its queueing
        if step > 0 {
            timed += start.elapsed();
        }
        opt.step(&grads)?;
        let value = loss.to_scalar::<f32>()?;
        first.get_or_insert(value);
        last = value;
        if step % 50 == 0 || step + 1 == o.steps {
            println!("step {step:4}  loss {value:.5}");
        }
    }
    let run = Run {
        first: first.unwrap_or(f32::NAN),
        last,
        forward_backward: timed.div_f64((o.steps.max(2) - 1) as f64),
    };
    println!(
        "first loss {:.5}, last loss {:.5}; {:.3} ms per forward + backward",
        run.first,
        run.last,
        run.forward_backward.as_secs_f64() * 1e3
    );
    // A loss that did not fall means the gradients did not reach the parameters.
    if !run.last.is_finite() || run.last >= 0.5 * run.first {
        candle_core::bail!(
            "{} norms: the loss did not fall by half: first {}, last {}",
            norms.label(),
            run.first,
            run.last
        );
    }
    Ok(run)
}

fn main() -> Result<()> {
    let o = options()?;
    let dev = device(o.cpu)?;
    let (x, y) = synthetic_data(o.batch, &dev)?;
    if !o.compare {
        train(&o, o.norms, &dev, &x, &y)?;
        return Ok(());
    }
    let ours = train(&o, Norms::Warpnorm, &dev, &x, &y)?;
    let theirs = train(&o, Norms::CandleNn, &dev, &x, &y)?;
    let ms = |r: &Run| r.forward_backward.as_secs_f64() * 1e3;
    println!(
        "forward + backward per step on {dev:?}: warpnorm {:.3} ms, candle-nn (decomposed) {:.3} ms; \
         warpnorm's time / candle-nn's: {:.2}",
        ms(&ours),
        ms(&theirs),
        ms(&ours) / ms(&theirs)
    );
    if !dev.is_cuda() {
        println!(
            "(on the CPU warpnorm's norms run its f64 reference backend: these times say nothing \
             about its GPU kernels)"
        );
    }
    Ok(())
}
