//! The CPU reference against every flax/keras fixture in tests/fixtures, and the
//! fixture loader's errors.

use std::path::{Path, PathBuf};

use warpnorm::tooling::fixture::Fixture;
use warpnorm::tooling::verify::{self, Cpu};
use warpnorm::{Api, DType, Error};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture_files() -> Vec<PathBuf> {
    let files = verify::collect_files(&[fixtures_dir()]).expect("tests/fixtures is readable");
    assert!(
        !files.is_empty(),
        "no fixtures in {}: generate them with scripts/gen_fixtures.sh",
        fixtures_dir().display()
    );
    files
}

#[test]
fn reference_matches_every_fixture() {
    let mut failures = Vec::new();
    let files = fixture_files();
    for f in &files {
        let report = verify::verify_file(f, &Cpu);
        let line = verify::format_report(&report);
        println!("{line}");
        if !report.passed() {
            failures.push(line);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fixture_checks_y_and_all_gradients() {
    for f in fixture_files() {
        let fx = Fixture::load(&f).unwrap();
        let b = fx
            .backward
            .as_ref()
            .expect("fixtures carry dy and gradients");
        let report = verify::verify_file(&f, &Cpu);
        let names: Vec<&str> = report.outputs.iter().map(|o| o.name).collect();
        let mut want = vec!["y", "dx"];
        if b.dscale.is_some() {
            want.push("dscale");
        }
        if b.dbias.is_some() {
            want.push("dbias");
        }
        assert_eq!(names, want, "{}", f.display());
        assert_eq!(b.dscale.is_some(), fx.config.has_scale(), "{}", f.display());
        assert_eq!(b.dbias.is_some(), fx.config.has_bias(), "{}", f.display());
    }
}

#[test]
fn the_fixture_set_covers_the_apis_and_features() {
    let all: Vec<Fixture> = fixture_files()
        .iter()
        .map(|f| Fixture::load(f).unwrap())
        .collect();
    let any = |p: &dyn Fn(&Fixture) -> bool| all.iter().any(p);
    assert!(any(&|f| f.config.api() == Api::FlaxLayerNorm));
    assert!(any(&|f| f.config.api() == Api::FlaxRmsNorm));
    assert!(any(&|f| f.config.api() == Api::Keras));
    assert!(any(&|f| f.config.rms_scaling_flag()));
    assert!(any(&|f| f.mask.is_some()));
    assert!(any(&|f| f.mask.is_some() && f.world.is_some()));
    assert!(any(
        &|f| f.world.is_some() && f.config.index_groups().is_some()
    ));
    assert!(any(
        &|f| !f.config.fast_variance() && f.config.api() != Api::Keras
    ));
    assert!(any(&|f| f.x.dtype() == DType::BF16));
    assert!(any(&|f| f.x.dtype() == DType::F16));
}

// ----- loader errors ----------------------------------------------------------------------

const GOOD: &str = r#"{
  "name": "tiny", "api": "flax.linen.LayerNorm", "config": {"use_bias": false},
  "x": {"shape": [2, 3], "dtype": "float32", "data": [1, 2, 3, 4, 5, 7]},
  "scale": {"shape": [3], "dtype": "float32", "data": [1, 1, 1]},
  "y": {"shape": [2, 3], "dtype": "float32", "data": [0, 0, 0, 0, 0, 0]}
}"#;

fn fixture_error(text: &str) -> String {
    match Fixture::parse("case.json", text) {
        Err(Error::Fixture { path, msg }) => {
            assert_eq!(path, Path::new("case.json"));
            msg
        }
        other => panic!("expected a fixture error, got {other:?}"),
    }
}

#[test]
fn a_minimal_fixture_parses() {
    let fx = Fixture::parse("case.json", GOOD).unwrap();
    assert_eq!(fx.name, "tiny");
    assert!(fx.backward.is_none() && fx.bias.is_none());
    assert_eq!(fx.ranks().unwrap().len(), 1);
}

#[test]
fn malformed_fixtures_name_the_field() {
    let cases = [
        (
            GOOD.replace("[1, 2, 3, 4, 5, 7]", "[1, 2, 3, 4, 5]"),
            "field `x.data`: expected 6 numbers for shape [2, 3], got 5",
        ),
        (GOOD.replace("\"name\": \"tiny\",", ""), "missing field `name`"),
        (GOOD.replace("float32\", \"data\": [1, 2, 3, 4", "float64\", \"data\": [1, 2, 3, 4"), "field `x.dtype`: unknown dtype `float64`"),
        (GOOD.replace("[1, 1, 1]", "[1, \"a\", 1]"), "field `scale.data[1]`: expected a number"),
        (GOOD.replace("[1, 1, 1]", "[1, 0.1, 1]"), "field `scale.data[1]`: 0.1 is not exactly representable in float32"),
        (
            GOOD.replace("[3], \"dtype\": \"float32\", \"data\": [1, 1, 1]", "[4], \"dtype\": \"float32\", \"data\": [1, 1, 1, 1]"),
            "field `scale.shape`: expected [3], got [4]",
        ),
        (GOOD.replace("{\"use_bias\": false}", "{}"), "missing field `bias`"),
        (GOOD.replace("{\"use_bias\": false}", "{\"epsilon\": -1}"), "field `config`"),
        (GOOD.replace("\"y\": {\"shape\": [2, 3], \"dtype\": \"float32\"", "\"y\": {\"shape\": [2, 3], \"dtype\": \"bfloat16\""), "field `y.dtype`"),
        (GOOD.replace("flax.linen.LayerNorm", "torch.nn.LayerNorm"), "field `api`"),
        (GOOD.replace("}\n}", "}, \"world\": 2\n}"), "axis_name"),
        (GOOD.replace("}\n}", "}, \"mask\": {\"shape\": [4], \"dtype\": \"bool\", \"data\": [true, true, true, true]}\n}"), "field `mask.shape`"),
        (GOOD.replace("}\n}", "}, \"dx\": {\"shape\": [2, 3], \"dtype\": \"float32\", \"data\": [0, 0, 0, 0, 0, 0]}\n}"), "without `dy`"),
        ("[1, 2]".to_string(), "one JSON object"),
        ("{\"name\": ".to_string(), "not valid JSON"),
    ];
    for (text, needle) in cases {
        let msg = fixture_error(&text);
        assert!(msg.contains(needle), "`{msg}` should contain `{needle}`");
    }
}

#[test]
fn masks_broadcast_to_x() {
    let text = GOOD.replace(
        "}\n}",
        "}, \"mask\": {\"shape\": [1, 3], \"dtype\": \"bool\", \"data\": [true, false, true]}\n}",
    );
    let fx = Fixture::parse("case.json", &text).unwrap();
    assert_eq!(fx.mask.unwrap(), vec![true, false, true, true, false, true]);
}

#[test]
fn unreadable_files_are_named() {
    let missing = fixtures_dir().join("does_not_exist.json");
    match Fixture::load(&missing) {
        Err(Error::Fixture { path, msg }) => {
            assert_eq!(path, missing);
            assert!(msg.contains("cannot read"), "{msg}");
        }
        other => panic!("expected a fixture error, got {other:?}"),
    }
}

// ----- comparison rules -------------------------------------------------------------------

use warpnorm::tooling::verify::{compare, Rounding};
use warpnorm::Tensor;

fn exact(dtype: DType) -> Rounding {
    Rounding {
        dtype,
        partial_sums: false,
    }
}

#[test]
fn nan_never_passes() {
    let want = Tensor::new(vec![3], DType::F32, vec![1.0, 2.0, 3.0]).unwrap();
    let got = Tensor::new(vec![3], DType::F32, vec![1.0, f64::NAN, 3.0]).unwrap();
    let c = compare("y", Some(&got), Some(&want), exact(DType::F32), 1.0).unwrap();
    assert!(!c.passed());
    assert!(c.max_abs_err.is_nan());
    assert_eq!(c.worst_index, 1);
    let c = compare("y", Some(&got), Some(&got), exact(DType::F32), 1.0).unwrap();
    assert!(!c.passed(), "NaN == NaN must not pass either");
    let inf = Tensor::new(vec![2], DType::F32, vec![f64::INFINITY, 1.0]).unwrap();
    assert!(compare("y", Some(&inf), Some(&inf), exact(DType::F32), 1.0)
        .unwrap()
        .passed());
    let other = Tensor::new(vec![2], DType::F32, vec![f64::NEG_INFINITY, 1.0]).unwrap();
    assert!(
        !compare("y", Some(&other), Some(&inf), exact(DType::F32), 1.0)
            .unwrap()
            .passed()
    );
}

#[test]
fn tolerance_follows_the_output_dtype() {
    // One bf16 ulp at 1.0 is 2^-7: a rounding flip passes, three ulps do not.
    let want = Tensor::new(vec![2], DType::BF16, vec![1.0, 0.5]).unwrap();
    let one = Tensor::new(vec![2], DType::BF16, vec![1.0 + 2f64.powi(-7), 0.5]).unwrap();
    let three = Tensor::new(vec![2], DType::BF16, vec![1.0 + 3.0 * 2f64.powi(-7), 0.5]).unwrap();
    assert!(
        compare("y", Some(&one), Some(&want), exact(DType::BF16), 1.0)
            .unwrap()
            .passed()
    );
    assert!(
        !compare("y", Some(&three), Some(&want), exact(DType::BF16), 1.0)
            .unwrap()
            .passed()
    );
    // The same relative error in f32 is far outside its tolerance.
    let want32 = want.cast(DType::F32);
    let one32 = one.cast(DType::F32);
    assert!(
        !compare("y", Some(&one32), Some(&want32), exact(DType::F32), 1.0)
            .unwrap()
            .passed()
    );
    // Missing, extra and mismatched outputs are failures, absent on both sides is no check.
    assert!(!compare("dx", None, Some(&want), exact(DType::BF16), 1.0)
        .unwrap()
        .passed());
    assert!(!compare("dx", Some(&want), None, exact(DType::BF16), 1.0)
        .unwrap()
        .passed());
    assert!(
        !compare("dx", Some(&want32), Some(&want), exact(DType::BF16), 1.0)
            .unwrap()
            .passed()
    );
    assert!(compare("dbias", None, None, exact(DType::F32), 1.0).is_none());
}
