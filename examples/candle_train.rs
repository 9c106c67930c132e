//! Trains a small candle model whose norms are warpnorm's, on synthetic data, with
//! candle's AdamW, and prints the loss as it falls.
//!
//! ```text
//! cargo run --release --features candle --example candle_train
//! cargo run --release --features candle-cuda --example candle_train   # on the first GPU
//! ```
//!
//! Options: `--steps N` (default 300), `--cpu` (stay on the CPU when a GPU is present),
//! `--norms candle-nn` (the same model with candle-nn's decomposed norms, which train;
//! its fused ones have no backward), `--batch N`, `--hidden N`. The time of a training
//! step (forward, backward, update) is printed, so the two kinds of norms can be compared.

use std::time::Instant;

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

struct Options {
    steps: usize,
    batch: usize,
    hidden: usize,
    cpu: bool,
    norms: Norms,
}

fn options() -> Result<Options> {
    let mut o = Options {
        steps: 300,
        batch: 256,
        hidden: 64,
        cpu: false,
        norms: Norms::Warpnorm,
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
            "--norms" => {
                o.norms = match args.next().as_deref() {
                    Some("warpnorm") => Norms::Warpnorm,
                    Some("candle-nn") => Norms::CandleNn,
                    _ => candle_core::bail!("--norms takes warpnorm or candle-nn"),
                }
            }
            other => candle_core::bail!(
                "unknown argument `{other}` (--steps N, --batch N, --hidden N, --cpu, --norms warpnorm|candle-nn)"
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
    fn new(o: &Options, vb: VarBuilder) -> Result<Model> {
        let h = o.hidden;
        let (norm1, norm2) = match o.norms {
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

fn main() -> Result<()> {
    let o = options()?;
    let dev = if o.cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available(0)?
    };
    let (x, y) = synthetic_data(o.batch, &dev)?;
    let varmap = VarMap::new();
    let model = Model::new(&o, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 3e-3,
            ..Default::default()
        },
    )?;
    let label = match o.norms {
        Norms::Warpnorm => "warpnorm",
        Norms::CandleNn => "candle-nn (decomposed)",
    };
    println!(
        "training on {dev:?} with {label} norms: {} steps, batch {}, hidden {}",
        o.steps, o.batch, o.hidden
    );

    let mut first = None;
    let mut last = f32::NAN;
    let mut timed = std::time::Duration::ZERO;
    for step in 0..o.steps {
        let start = Instant::now();
        let pred = model.forward(&x)?;
        let loss = (pred - &y)?.sqr()?.mean(D::Minus1)?.mean_all()?;
        opt.backward_step(&loss)?;
        let value = loss.to_scalar::<f32>()?; // waits for the GPU
        if step > 0 {
            timed += start.elapsed(); // the first step includes one-time set-up
        }
        first.get_or_insert(value);
        last = value;
        if step % 50 == 0 || step + 1 == o.steps {
            println!("step {step:4}  loss {value:.5}");
        }
    }
    let first = first.unwrap_or(f32::NAN);
    let per_step = timed.as_secs_f64() * 1e3 / (o.steps.max(2) - 1) as f64;
    println!("first loss {first:.5}, last loss {last:.5}; {per_step:.3} ms per training step");
    // A loss that did not fall means the gradients did not reach the parameters.
    if !last.is_finite() || last >= 0.5 * first {
        candle_core::bail!("the loss did not fall by half: first {first}, last {last}");
    }
    Ok(())
}
