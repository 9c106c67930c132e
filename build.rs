//! Build script: compiles every `kernels/*.cu` with NVRTC into CUBIN (sm_80, sm_90 and any
//! extra architectures in `WARPNORM_CUDA_ARCHS`) plus PTX for compute_80 (the JIT fallback
//! for other GPUs), embeds them with the NVRTC version that made them, and records the
//! ptxas resource report. (The parameter structs' Rust mirror is committed:
//! `scripts/gen_bindings.sh`, so no libclang is needed here.)
//!
//! No `nvcc` and no GPU are needed: NVRTC and the CUDA headers suffice. Where they are
//! looked for is `find_toolchain`'s order; with CUDA 12.2's NVRTC (the pinned wheels) the
//! kernels load on every driver from r535 on.

use std::ffi::{CStr, CString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

#[allow(dead_code)]
mod tiers {
    include!("src/cuda/tiers.rs");
}

/// The launch shapes `tiers` shares with the kernels (`kernels/params.h`).
#[allow(
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case
)]
mod params {
    include!("src/cuda/params_bindings.rs");
}

const DEFAULT_CUBIN_ARCHS: [&str; 2] = ["sm_80", "sm_90"];
const PTX_ARCH: &str = "compute_80";

fn main() {
    // A child of this script compiling one (source, target): see `compile_in_child`.
    if env::args().nth(1).as_deref() == Some(CHILD_FLAG) {
        return compile_as_child();
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for var in [
        "WARPNORM_CUDA_ROOT",
        "WARPNORM_CUDA_ARCHS",
        "CUDA_HOME",
        "CUDA_PATH",
        "PYTHONPATH",
        "DOCS_RS",
        "WARPNORM_KERNEL_CACHE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/cuda/tiers.rs");

    record_git_commit(&manifest);

    if env::var_os("DOCS_RS").is_some() {
        // docs.rs has no CUDA toolchain: document the crate with no kernels embedded (and
        // forget the compiled ones, so that a later build in this OUT_DIR embeds them again).
        let _ = fs::remove_file(out.join("kernels.stamp"));
        fs::write(out.join("kernels.rs"), embedded_source(&[], &[], None)).unwrap();
        fs::write(out.join("resource_usage.txt"), "").unwrap();
        return;
    }

    let toolchain = match find_toolchain(&manifest) {
        Some(t) => t,
        None => fail(&format!(
            "NVRTC and the CUDA headers, which compile warpnorm's kernels, were not found. Run\n\n    \
             {PIP_INSTALL}\n\n\
             in the Python that `python3` runs (a virtual environment is fine; no GPU or root needed), \
             or set WARPNORM_CUDA_ROOT to a CUDA 12.2+ toolkit or to a `pip install --target` folder."
        )),
    };
    load_nvrtc(&toolchain);
    let nvrtc_version = nvrtc_version();

    let mut archs: Vec<String> = DEFAULT_CUBIN_ARCHS.iter().map(|s| s.to_string()).collect();
    if let Ok(extra) = env::var("WARPNORM_CUDA_ARCHS") {
        for arch in extra.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            // sm_80 is the oldest the kernels are written for (cp.async, __nanosleep).
            let generation = arch.strip_prefix("sm_").and_then(|v| {
                v.trim_end_matches(|c: char| c.is_ascii_alphabetic())
                    .parse::<u32>()
                    .ok()
            });
            match generation {
                None => fail(&format!(
                    "WARPNORM_CUDA_ARCHS: `{arch}` is not a real architecture like sm_100"
                )),
                Some(v) if v < 80 => fail(&format!(
                    "WARPNORM_CUDA_ARCHS: `{arch}` is older than sm_80, the oldest the kernels support"
                )),
                Some(_) => {}
            }
            if !archs.iter().any(|a| a == arch) {
                archs.push(arch.to_string());
            }
        }
    }

    let mut sources: Vec<PathBuf> = fs::read_dir(manifest.join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();

    // The kernels take minutes to compile: skip the work when nothing that goes into them
    // changed since the last run in this OUT_DIR (the script also reruns for a new commit).
    let fingerprint = fingerprint(&manifest, &archs, &toolchain, nvrtc_version);
    let stamp = out.join("kernels.stamp");
    let cache = cache_dir(&out, &format!("kernels-{fingerprint}"));
    let up_to_date = fs::read_to_string(&stamp).ok().as_deref() == Some(fingerprint.as_str());
    if up_to_date || cache.as_deref().is_some_and(|c| restore(c, &out)) {
        fs::write(&stamp, &fingerprint).unwrap();
        #[cfg(feature = "emulator")]
        build_emulator(&manifest, &out, &fingerprint);
        return;
    }

    let mut jobs = Vec::new();
    for src in &sources {
        for arch in &archs {
            jobs.push((src.clone(), Target::Cubin(arch.clone())));
        }
        jobs.push((src.clone(), Target::Ptx(PTX_ARCH.to_string())));
    }
    let include_dirs = [toolchain.include.clone(), manifest.join("kernels")];
    let results = run_parallel(&jobs, |(src, target)| {
        let started = std::time::Instant::now();
        let artifact = compile_in_child(&toolchain, src, target, &include_dirs, &out);
        (artifact, started.elapsed())
    });

    // What each compilation cost (build_times.txt): the build-time budget's evidence.
    let mut report = String::new();
    let mut times = String::new();
    let mut modules = Vec::new();
    for ((src, target), (artifact, took)) in jobs.iter().zip(results) {
        let stem = src.file_stem().unwrap().to_str().unwrap().to_string();
        writeln!(
            times,
            "{stem}.cu {} {:.1} s",
            target.arch(),
            took.as_secs_f64()
        )
        .unwrap();
        let file = out.join(format!("{stem}.{}.{}", target.arch(), target.extension()));
        fs::write(&file, &artifact.binary).unwrap();
        writeln!(report, "## {stem}.cu {}", target.arch()).unwrap();
        report.push_str(&artifact.log);
        report.push('\n');
        modules.push(Module {
            stem,
            target: target.clone(),
            file,
            lowered: artifact.lowered,
        });
    }
    fs::write(out.join("resource_usage.txt"), &report).unwrap();
    fs::write(out.join("build_times.txt"), &times).unwrap();
    fs::write(
        out.join("kernels.rs"),
        embedded_source(&modules, &archs, Some(nvrtc_version)),
    )
    .unwrap();
    if let Some(cache) = &cache {
        let mut files: Vec<PathBuf> = modules.iter().map(|m| m.file.clone()).collect();
        files.extend(["resource_usage.txt", "kernels.rs"].map(|f| out.join(f)));
        store(cache, &files);
    }
    fs::write(&stamp, &fingerprint).unwrap();

    #[cfg(feature = "emulator")]
    build_emulator(&manifest, &out, &fingerprint);
}

/// A digest of everything the compiled kernels depend on: every file under kernels/, the
/// instantiation list, the architectures and the NVRTC used (its version too: a wheel
/// upgrade keeps the library's path).
fn fingerprint(
    manifest: &Path,
    archs: &[String],
    toolchain: &Toolchain,
    nvrtc_version: (u32, u32),
) -> String {
    use std::hash::{Hash, Hasher};
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut inputs = Vec::new();
    files(&manifest.join("kernels"), &mut inputs);
    inputs.push(manifest.join("src/cuda/tiers.rs"));
    inputs.sort();
    // Paths relative to the checkout and no toolchain paths, so that two checkouts of the
    // same sources share one cache entry.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in &inputs {
        p.strip_prefix(manifest).unwrap_or(p).hash(&mut h);
        fs::read(p).unwrap_or_default().hash(&mut h);
    }
    archs.hash(&mut h);
    toolchain.nvrtc.file_name().hash(&mut h);
    fs::read(toolchain.include.join("cuda_fp16.hpp"))
        .unwrap_or_default()
        .hash(&mut h);
    nvrtc_version.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The folder that keeps one set of build outputs (`key`) across build folders: every
/// feature set, profile and checkout has its own OUT_DIR, and compiling the kernels again
/// for each would cost minutes. `WARPNORM_KERNEL_CACHE` names the cache's root (`off`
/// disables it); by default it is `warpnorm-kernels/` in cargo's target folder.
fn cache_dir(out: &Path, key: &str) -> Option<PathBuf> {
    let root = match env::var_os("WARPNORM_KERNEL_CACHE") {
        Some(v) if v == "off" || v.is_empty() => return None,
        Some(v) => PathBuf::from(v),
        None => out
            .ancestors()
            .find(|d| d.join("CACHEDIR.TAG").is_file())?
            .join("warpnorm-kernels"),
    };
    Some(root.join(key))
}

/// Copies a complete cache entry into `out`; false when there is none (or it is unreadable).
fn restore(entry: &Path, out: &Path) -> bool {
    let Ok(files) = fs::read_dir(entry) else {
        return false;
    };
    files
        .flatten()
        .all(|f| fs::copy(f.path(), out.join(f.file_name())).is_ok())
}

/// Saves `files` as the cache entry `entry`, whole or not at all: they are written to a
/// private folder that is then renamed into place (a concurrent build may win the race;
/// its entry holds the same bytes). A cache that cannot be written only costs time.
fn store(entry: &Path, files: &[PathBuf]) {
    let (Some(root), Some(name)) = (entry.parent(), entry.file_name()) else {
        return;
    };
    let staging = root.join(format!(
        ".{}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let staged = fs::create_dir_all(&staging).is_ok()
        && files.iter().all(|f| {
            f.file_name()
                .is_some_and(|n| fs::copy(f, staging.join(n)).is_ok())
        });
    if !staged || fs::rename(&staging, entry).is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
}

/// Makes the git commit of the source tree available as WARPNORM_GIT_COMMIT (for
/// `warpnorm info` and benchmark reports); absent outside a git checkout.
fn record_git_commit(manifest: &Path) {
    let git = manifest.join(".git");
    if !git.exists() {
        return;
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = fs::read_to_string(git.join("HEAD")) {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{r}");
        }
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(manifest)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(c) = commit {
        println!("cargo:rustc-env=WARPNORM_GIT_COMMIT={c}");
    }
}

/// Compiles the CPU emulation of the kernels (kernels/emulator/) with the host C++
/// compiler, for every instantiation of `tiers::EMULATED_SOURCES`.
#[cfg(feature = "emulator")]
fn build_emulator(manifest: &Path, out: &Path, fingerprint: &str) {
    const LIB: &str = "warpnorm_emulator";
    let mut table = String::new();
    for source in tiers::EMULATED_SOURCES {
        for e in tiers::instantiations(source) {
            writeln!(table, "{{{e:?}, [](const void* p) {{ call(&{e}, p); }}}},").unwrap();
        }
    }
    let triple = env::var("TARGET").unwrap_or_default();
    let compiler = env::var("CXX").unwrap_or_default();
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // The table names what is compiled: it follows tiers.rs, and this script's list.
        (&triple, &compiler, &table).hash(&mut h);
        format!("emulator-{fingerprint}-{:016x}", h.finish())
    };
    let stamp = out.join("emulator.stamp");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
        && out.join(format!("lib{LIB}.a")).is_file()
    {
        // Up to date: only tell cargo what to link.
        println!("cargo:rustc-link-search=native={}", out.display());
        println!("cargo:rustc-link-lib=static={LIB}");
        println!("cargo:rustc-link-lib=stdc++");
        return;
    }
    println!("cargo:rerun-if-env-changed=CXX");
    let cache = cache_dir(out, &key);
    if cache.as_deref().is_some_and(|c| restore(c, out)) {
        println!("cargo:rustc-link-search=native={}", out.display());
        println!("cargo:rustc-link-lib=static={LIB}");
        println!("cargo:rustc-link-lib=stdc++");
        fs::write(stamp, &key).unwrap();
        return;
    }
    fs::write(out.join("kernel_table.inc"), table).unwrap();
    let emu = manifest.join("kernels/emulator");
    println!("cargo:rerun-if-changed=kernels/emulator");
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file(emu.join("harness.cpp"))
        .include(&emu)
        .include(manifest.join("kernels"))
        .include(out)
        .flag("-include")
        .flag(emu.join("cuda_emulation.h").to_str().unwrap())
        .flag_if_supported("-Wno-unknown-pragmas")
        .opt_level(1)
        .compile(LIB);
    if let Some(cache) = &cache {
        store(cache, &[out.join(format!("lib{LIB}.a"))]);
    }
    fs::write(stamp, &key).unwrap();
}

#[derive(Clone)]
enum Target {
    Cubin(String),
    Ptx(String),
}

impl Target {
    fn arch(&self) -> &str {
        match self {
            Target::Cubin(a) | Target::Ptx(a) => a,
        }
    }
    fn extension(&self) -> &str {
        match self {
            Target::Cubin(_) => "cubin",
            Target::Ptx(_) => "ptx",
        }
    }
}

struct Toolchain {
    include: PathBuf,
    nvrtc: PathBuf,
    builtins: Option<PathBuf>,
}

/// The NVRTC wheels this crate is tested with: what the build error tells users to install.
const PIP_INSTALL: &str =
    "pip install nvidia-cuda-nvrtc-cu12==12.2.140 nvidia-cuda-runtime-cu12==12.2.140";

/// Where NVRTC and the CUDA headers are looked for, in order: the explicit
/// `WARPNORM_CUDA_ROOT`, `CUDA_HOME`, `CUDA_PATH`, this repository's `.toolchain/` (what
/// `scripts/setup.sh` pinned, ahead of system-wide installs), a system toolkit, then
/// NVIDIA's pip wheels in the active Python's site-packages (and `PYTHONPATH`).
fn find_toolchain(manifest: &Path) -> Option<Toolchain> {
    let mut dirs: Vec<PathBuf> = ["WARPNORM_CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|v| env::var_os(v).map(PathBuf::from))
        .collect();
    dirs.push(manifest.join(".toolchain/py"));
    dirs.push(PathBuf::from("/usr/local/cuda"));
    dirs.extend(python_site_packages());
    dirs.iter().find_map(|d| toolchain_in(d))
}

/// A toolkit (`include/` beside `lib64/` or `lib/`) or a folder holding NVIDIA's wheels:
/// CUDA 12's `nvidia/cuda_nvrtc` + `nvidia/cuda_runtime`, or CUDA 13's `nvidia/cu13`.
fn toolchain_in(dir: &Path) -> Option<Toolchain> {
    let wheels = dir.join("nvidia");
    let layouts = [
        (
            dir.join("include"),
            vec![dir.join("lib64"), dir.join("lib"), dir.join("lib/x64")],
        ),
        (
            wheels.join("cuda_runtime/include"),
            vec![wheels.join("cuda_nvrtc/lib")],
        ),
        (wheels.join("cu13/include"), vec![wheels.join("cu13/lib")]),
    ];
    layouts.into_iter().find_map(|(include, libs)| {
        if !include.join("cuda_fp16.h").is_file() || !include.join("cuda_bf16.h").is_file() {
            return None;
        }
        libs.iter().find_map(|lib| {
            Some(Toolchain {
                include: include.clone(),
                nvrtc: shared_library(lib, "libnvrtc.so")?,
                builtins: shared_library(lib, "libnvrtc-builtins.so"),
            })
        })
    })
}

/// The first `prefix*` shared library in `dir` (name order), skipping the `.alt.` builds.
fn shared_library(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut hits: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && !name.contains(".alt.")
        })
        .collect();
    hits.sort();
    hits.into_iter().next()
}

/// The active Python's site-packages and `sys.path` (which includes `PYTHONPATH`).
fn python_site_packages() -> Vec<PathBuf> {
    let script = "import site,sys;print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))";
    std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// cudarc loads NVRTC by library name; loading it (and its builtins, which it opens by
/// name in turn) by absolute path first makes those lookups find the copy we chose.
fn load_nvrtc(t: &Toolchain) {
    for lib in t.builtins.iter().chain(std::iter::once(&t.nvrtc)) {
        // SAFETY: loading NVIDIA's NVRTC libraries runs no initialisers with preconditions.
        match unsafe { libloading::Library::new(lib) } {
            Ok(handle) => std::mem::forget(handle), // keep it loaded for the whole build
            Err(e) => fail(&format!("cannot load {}: {e}", lib.display())),
        }
    }
}

/// (major, minor) of the loaded NVRTC.
fn nvrtc_version() -> (u32, u32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (load_nvrtc); the call writes two ints we own.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .unwrap_or_else(|e| fail(&format!("nvrtcVersion: {e:?}")));
    (major as u32, minor as u32)
}

/// One compiled image on disk and the kernels it holds.
struct Module {
    stem: String,
    target: Target,
    file: PathBuf,
    lowered: Vec<(String, String)>,
}

struct Artifact {
    binary: Vec<u8>,
    log: String,
    lowered: Vec<(String, String)>,
}

/// The first argument of this script run as a child compiling one (source, target).
const CHILD_FLAG: &str = "--warpnorm-nvrtc-job";

/// `compile` in a child process of this script, which writes the artifact into `out`:
/// NVRTC serialises the compilations of one process (two threads got 1.15 cores' worth
/// of work done), so parallel jobs run in processes of their own.
fn compile_in_child(
    t: &Toolchain,
    src: &Path,
    target: &Target,
    include_dirs: &[PathBuf],
    out: &Path,
) -> Artifact {
    let stem = src.file_stem().unwrap().to_str().unwrap();
    let prefix = out.join(format!("{stem}.{}.job", target.arch()));
    let builtins = t
        .builtins
        .as_ref()
        .map_or(String::new(), |b| b.display().to_string());
    let status = std::process::Command::new(env::current_exe().unwrap())
        .arg(CHILD_FLAG)
        .args([src.as_os_str(), prefix.as_os_str(), t.nvrtc.as_os_str()])
        .arg(&builtins)
        .arg(target.extension())
        .arg(target.arch())
        .args(include_dirs)
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot start the NVRTC job for {stem}.cu: {e}")));
    if !status.success() {
        // The child printed its error.
        std::process::exit(1);
    }
    let read = |ext: &str| {
        let path = prefix.with_extension(format!("job.{ext}"));
        let data = fs::read(&path).unwrap();
        let _ = fs::remove_file(&path);
        data
    };
    let text = |ext: &str| String::from_utf8(read(ext)).unwrap();
    Artifact {
        binary: read("bin"),
        log: text("log"),
        lowered: text("lowered")
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(e, m)| (e.to_string(), m.to_string()))
            .collect(),
    }
}

/// The child's side of `compile_in_child`: arguments source, output prefix, NVRTC library,
/// builtins library (empty: none), `cubin` or `ptx`, arch, include directories.
fn compile_as_child() {
    let args: Vec<String> = env::args().skip(2).collect();
    let [src, prefix, nvrtc, builtins, kind, arch, include @ ..] = args.as_slice() else {
        fail(&format!("{CHILD_FLAG}: unexpected arguments {args:?}"));
    };
    let toolchain = Toolchain {
        include: PathBuf::new(),
        nvrtc: PathBuf::from(nvrtc),
        builtins: (!builtins.is_empty()).then(|| PathBuf::from(builtins)),
    };
    load_nvrtc(&toolchain);
    let target = match kind.as_str() {
        "cubin" => Target::Cubin(arch.clone()),
        _ => Target::Ptx(arch.clone()),
    };
    let include: Vec<PathBuf> = include.iter().map(PathBuf::from).collect();
    let artifact = compile(Path::new(src), &target, &include);
    let prefix = PathBuf::from(prefix);
    let write = |ext: &str, data: &[u8]| {
        fs::write(prefix.with_extension(format!("job.{ext}")), data).unwrap()
    };
    write("bin", &artifact.binary);
    write("log", artifact.log.as_bytes());
    let lowered: String = artifact
        .lowered
        .iter()
        .map(|(e, m)| format!("{e}\t{m}\n"))
        .collect();
    write("lowered", lowered.as_bytes());
}

fn compile(src: &Path, target: &Target, include_dirs: &[PathBuf]) -> Artifact {
    use cudarc::nvrtc::{result, sys};
    let name = src.file_name().unwrap().to_str().unwrap();
    let code = CString::new(fs::read_to_string(src).unwrap()).unwrap();
    let prog_name = CString::new(name).unwrap();
    let exprs: Vec<CString> = tiers::instantiations(name)
        .into_iter()
        .map(|e| CString::new(e).unwrap())
        .collect();

    let mut options = vec![
        "--std=c++17".to_string(),
        format!("--gpu-architecture={}", target.arch()),
        "--device-as-default-execution-space".to_string(),
        "-DNDEBUG".to_string(),
    ];
    if matches!(target, Target::Cubin(_)) {
        options.push("--ptxas-options=--verbose".to_string());
    }
    options.extend(
        include_dirs
            .iter()
            .map(|d| format!("--include-path={}", d.display())),
    );

    let prog = result::create_program(&code, Some(&prog_name))
        .unwrap_or_else(|e| fail(&format!("{name}: {e:?}")));
    // SAFETY: `prog` is a live program until destroy_program below; every pointer passed
    // (expressions, options) outlives the calls that read it.
    unsafe {
        for e in &exprs {
            sys::nvrtcAddNameExpression(prog, e.as_ptr())
                .result()
                .unwrap_or_else(|err| fail(&format!("{name}: adding {e:?}: {err:?}")));
        }
        let compiled = result::compile_program(prog, &options);
        let log = c_chars_to_string(&result::get_program_log(prog).unwrap_or_default());
        if let Err(err) = compiled {
            fail(&format!(
                "NVRTC failed to compile {name} for {}: {err:?}\n{log}",
                target.arch()
            ));
        }
        let binary = match target {
            Target::Ptx(_) => {
                let mut ptx = c_chars_to_string(&result::get_ptx(prog).unwrap()).into_bytes();
                ptx.push(0);
                ptx
            }
            Target::Cubin(_) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size).result().unwrap();
                let mut cubin = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
                    .result()
                    .unwrap();
                cubin
            }
        };
        let lowered = exprs
            .iter()
            .map(|e| {
                let mut ptr = std::ptr::null();
                sys::nvrtcGetLoweredName(prog, e.as_ptr(), &mut ptr)
                    .result()
                    .unwrap();
                let mangled = CStr::from_ptr(ptr).to_str().unwrap().to_string();
                (e.to_str().unwrap().to_string(), mangled)
            })
            .collect();
        result::destroy_program(prog).unwrap();
        Artifact {
            binary,
            log,
            lowered,
        }
    }
}

fn c_chars_to_string(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs `f` over `jobs` on all cores, keeping the results in job order.
fn run_parallel<J: Sync, R: Send>(jobs: &[J], f: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<R>> = (0..jobs.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs.len() {
                    break;
                }
                let r = f(&jobs[i]);
                slots.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results.into_iter().map(Option::unwrap).collect()
}

/// Rust source that embeds the compiled modules (see src/cuda/kernels.rs for the types).
fn embedded_source(modules: &[Module], archs: &[String], nvrtc: Option<(u32, u32)>) -> String {
    let mut s = String::new();
    writeln!(
        s,
        "pub const NVRTC_VERSION: Option<(u32, u32)> = {nvrtc:?};"
    )
    .unwrap();
    writeln!(s, "pub const CUBIN_ARCHS: &[&str] = &{archs:?};").unwrap();
    writeln!(s, "pub const PTX_ARCH: &str = {PTX_ARCH:?};").unwrap();
    writeln!(s, "pub static IMAGES: &[Image] = &[").unwrap();
    for Module {
        stem,
        target,
        file,
        lowered,
    } in modules
    {
        // Named relative to OUT_DIR, so that the file is the same in every build folder.
        let data = format!(
            "include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{}\"))",
            file.file_name().unwrap().to_string_lossy()
        );
        let kind = match target {
            Target::Cubin(_) => "ImageKind::Cubin",
            Target::Ptx(_) => "ImageKind::Ptx",
        };
        writeln!(
            s,
            "    Image {{ source: {stem:?}, arch: {:?}, kind: {kind}, data: {data}, names: &{lowered:?} }},",
            target.arch()
        )
        .unwrap();
    }
    writeln!(s, "];").unwrap();
    s
}

fn fail(msg: &str) -> ! {
    eprintln!("\nwarpnorm build error: {msg}\n");
    std::process::exit(1);
}
