//! Model variants: one model shipped in several number formats (`[variants]` in the sidecar),
//! and the choice of the one that runs on this CPU.
//!
//! Why: which format is faster depends on the CPU and on tract's kernels for it. The int8 model
//! is 1.65× faster than f32 with AVX-512 VNNI, but 53× *slower* on an AVX2-only x86, where
//! tract 0.23.9's `avx2_mmm_i32_8x8` kernel pays an SSE/AVX transition on every inner-loop
//! step (models/MODEL_CARD.md). So at load the variants are timed here, on this CPU, and the
//! fastest runs; `model.variant` (or `--variant`) forces one.
//!
//! The result is cached in a small JSON file keyed by the variants' sha256s, the CPU (model
//! and the instruction set tract dispatches on, after `TRACT_CPU_ISA`) and the inspectd
//! version, so a restart does not time again. A cache that cannot be read or written only
//! costs a timing: it never fails the load.
//!
//! The choice, the cache key and the cache file are pure functions below; [`select`] is generic
//! over the loaded thing so that its rules are tested without tract.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::bad_input;

/// Wall-clock budget for timing the variants at load (warm-ups included).
pub(crate) const TIMING_BUDGET: Duration = Duration::from_secs(2);
/// Most timed runs per variant. Runs of a few ms are noisy on a shared box (one in five
/// 7-run timings here picked the 1.3× slower variant); 40 alternating runs of each cost about
/// 0.25 s for this model, and the budget caps slow variants long before.
pub(crate) const MAX_RUNS: usize = 40;

/// Which variant to run: `model.variant` / `--variant`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantPref {
    /// Time the listed variants on this CPU (or use the cached timing) and run the fastest.
    #[default]
    Auto,
    F32,
    Int8,
}

impl VariantPref {
    /// The variant name this preference forces, if any.
    pub fn forced(self) -> Option<&'static str> {
        match self {
            VariantPref::Auto => None,
            VariantPref::F32 => Some("f32"),
            VariantPref::Int8 => Some("int8"),
        }
    }
}

impl std::str::FromStr for VariantPref {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VariantPref::Auto),
            "f32" => Ok(VariantPref::F32),
            "int8" => Ok(VariantPref::Int8),
            _ => Err(format!("{s:?} is not auto, f32 or int8")),
        }
    }
}

/// How the running variant was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// Timed on this CPU just now.
    Timed,
    /// Timed earlier on this CPU, read from the cache.
    Cached,
    /// Named by `model.variant` / `--variant`.
    Forced,
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            How::Timed => "timed now",
            How::Cached => "cached timing",
            How::Forced => "forced",
        })
    }
}

/// The variant that runs and what it was chosen on.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// `f32` or `int8`.
    pub name: String,
    /// Median forward pass of each variant on this CPU, in ms (empty when forced and never timed).
    pub forward_ms: BTreeMap<String, f64>,
    pub how: How,
}

impl Selection {
    /// `int8 (timed now; forward f32 9.10 ms, int8 5.40 ms)`, for logs and the CLI.
    pub fn describe(&self) -> String {
        let times: Vec<String> = self
            .forward_ms
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.2} ms"))
            .collect();
        if times.is_empty() {
            format!("{} ({})", self.name, self.how)
        } else {
            format!("{} ({}; forward {})", self.name, self.how, times.join(", "))
        }
    }

    /// `{"name": …, "forward_ms": {"f32": …, "int8": …}}` for the MQTT status.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"name": self.name, "forward_ms": self.forward_ms, "how": self.how})
    }
}

/// One listed variant: its name, file and the file's sha256.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub name: &'static str,
    pub path: PathBuf,
    pub sha256: String,
}

/// The fastest variant by median forward time; ties go to the first in name order. `None` when
/// no time is a finite number.
pub fn fastest(times: &BTreeMap<String, f64>) -> Option<&str> {
    times
        .iter()
        .filter(|(_, ms)| ms.is_finite())
        .fold(None, |best: Option<(&String, f64)>, (n, &ms)| match best {
            Some((_, b)) if b <= ms => best,
            _ => Some((n, ms)),
        })
        .map(|(n, _)| n.as_str())
}

/// The cache key: what a timing depends on. Any change of a variant file, of the CPU (or of the
/// instruction set tract is told to use) or of inspectd (and so of tract) times again.
pub fn cache_key(cands: &[Candidate], cpu: &str, version: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("inspectd-variant/1\n{version}\n{cpu}\n"));
    for c in cands {
        h.update(format!("{}={}\n", c.name, c.sha256));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache file for `key` in `dir`.
pub fn cache_file(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("variant-{}.json", &key[..key.len().min(16)]))
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    chosen: String,
    forward_ms: BTreeMap<String, f64>,
    #[serde(default)]
    cpu: String,
}

/// The cached selection in `text` if it is for `key` and well formed (its choice one of its
/// timed variants, every time a positive number); anything else is a miss, never an error.
pub(crate) fn parse_cache(text: &str, key: &str) -> Option<Selection> {
    let e: CacheEntry = serde_json::from_str(text).ok()?;
    let ok = e.key == key
        && e.forward_ms.contains_key(&e.chosen)
        && e.forward_ms.values().all(|ms| ms.is_finite() && *ms > 0.0);
    ok.then_some(Selection {
        name: e.chosen,
        forward_ms: e.forward_ms,
        how: How::Cached,
    })
}

/// The cache file's text for a timed selection.
pub fn cache_text(key: &str, cpu: &str, sel: &Selection) -> String {
    let e = CacheEntry {
        key: key.to_string(),
        chosen: sel.name.clone(),
        forward_ms: sel.forward_ms.clone(),
        cpu: cpu.to_string(),
    };
    serde_json::to_string_pretty(&e).unwrap_or_default() + "\n"
}

fn read_cache(dir: Option<&Path>, key: &str) -> Option<Selection> {
    let text = std::fs::read_to_string(cache_file(dir?, key)).ok()?;
    parse_cache(&text, key)
}

/// Writes the cache; a failure is logged, never returned.
fn write_cache(dir: Option<&Path>, key: &str, cpu: &str, sel: &Selection) {
    let Some(dir) = dir else { return };
    let path = cache_file(dir, key);
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let res = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, cache_text(key, cpu, sel)))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(
            "model variant: cannot write the timing cache {}: {e} (the next load times again)",
            path.display()
        );
    }
}

/// Where CLI commands keep the cache: `$XDG_CACHE_HOME/inspectd`, `$HOME/.cache/inspectd`, or
/// `<tmp>/inspectd-cache`. (The daemon uses its spool's folder.)
pub(crate) fn cli_cache_dir(xdg_cache: Option<&Path>, home: Option<&Path>, tmp: &Path) -> PathBuf {
    match (xdg_cache, home) {
        (Some(x), _) if x.is_absolute() => x.join("inspectd"),
        (_, Some(h)) if h.is_absolute() => h.join(".cache").join("inspectd"),
        _ => tmp.join("inspectd-cache"),
    }
}

/// [`cli_cache_dir`] from the environment.
pub fn cli_cache_dir_from_env() -> PathBuf {
    let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    cli_cache_dir(xdg.as_deref(), home.as_deref(), &std::env::temp_dir())
}

/// Times each item's run alternately (ABAB…, so machine noise hits all alike): one warm-up each,
/// then rounds of one run each until `max_runs` or until `budget` would be overrun. The clock is
/// the sum of the times `run` reports, so an item slower than the budget still gets one timed
/// run and the total stays within the budget plus one run of each. Returns each median.
pub(crate) fn time_alternating<E>(
    items: &[(&str, &E)],
    mut run: impl FnMut(&E) -> Result<f64>,
    budget: Duration,
    max_runs: usize,
) -> Result<BTreeMap<String, f64>> {
    let budget_ms = budget.as_secs_f64() * 1e3;
    let mut spent = 0.0;
    let mut last = vec![0.0; items.len()];
    for (i, (_, e)) in items.iter().enumerate() {
        last[i] = run(e)?;
        spent += last[i];
    }
    let mut samples: Vec<Vec<f64>> = vec![vec![]; items.len()];
    for _ in 0..max_runs {
        let mut ran = false;
        for (i, (_, e)) in items.iter().enumerate() {
            if !samples[i].is_empty() && spent + last[i] > budget_ms {
                continue;
            }
            last[i] = run(e)?;
            spent += last[i];
            samples[i].push(last[i]);
            ran = true;
        }
        if !ran {
            break;
        }
    }
    Ok(items
        .iter()
        .zip(samples)
        .map(|((n, _), mut s)| {
            let m = crate::stats::median(&mut s).unwrap_or(f64::NAN);
            (n.to_string(), m)
        })
        .collect())
}

/// What [`select`] needs besides the candidates.
pub struct Ctx<'a> {
    pub pref: VariantPref,
    /// Folder of the timing cache; `None` = no cache.
    pub cache_dir: Option<&'a Path>,
    /// The CPU as tract sees it ([`cpu_signature`]).
    pub cpu: &'a str,
    /// inspectd's version.
    pub version: &'a str,
    pub budget: Duration,
}

/// Picks and loads one variant. Forced: loads that one, no timing. Auto: a cache hit loads the
/// cached choice, no timing; a miss loads every candidate, times them with `run`, keeps the
/// fastest and writes the cache.
pub fn select<E>(
    cands: &[Candidate],
    ctx: &Ctx,
    mut load: impl FnMut(&Candidate) -> Result<E>,
    run: impl FnMut(&E) -> Result<f64>,
) -> Result<(E, Selection)> {
    let key = cache_key(cands, ctx.cpu, ctx.version);
    let cached = read_cache(ctx.cache_dir, &key).filter(|s| {
        s.forward_ms
            .keys()
            .all(|n| cands.iter().any(|c| c.name == n))
    });
    let by_name = |name: &str| cands.iter().find(|c| c.name == name);
    if let Some(name) = ctx.pref.forced() {
        let listed: Vec<&str> = cands.iter().map(|c| c.name).collect();
        let c = by_name(name).ok_or_else(|| {
            bad_input(format!(
                "model.variant = {name:?}, but the sidecar's [variants] lists only {listed:?}"
            ))
        })?;
        let sel = Selection {
            name: name.to_string(),
            forward_ms: cached.map(|s| s.forward_ms).unwrap_or_default(),
            how: How::Forced,
        };
        return Ok((load(c)?, sel));
    }
    if let Some(sel) = cached {
        if let Some(c) = by_name(&sel.name) {
            return Ok((load(c)?, sel));
        }
    }
    let mut loaded: Vec<(&str, E)> = vec![];
    for c in cands {
        loaded.push((c.name, load(c)?));
    }
    let items: Vec<(&str, &E)> = loaded.iter().map(|(n, e)| (*n, e)).collect();
    let forward_ms = time_alternating(&items, run, ctx.budget, MAX_RUNS)?;
    let name = fastest(&forward_ms)
        .ok_or_else(|| anyhow::anyhow!("model variants: no usable timing"))?
        .to_string();
    let sel = Selection {
        name,
        forward_ms,
        how: How::Timed,
    };
    write_cache(ctx.cache_dir, &key, ctx.cpu, &sel);
    let e = loaded
        .into_iter()
        .find(|(n, _)| *n == sel.name)
        .map(|(_, e)| e)
        .expect("the fastest is one of the loaded");
    Ok((e, sel))
}

/// The CPU as far as tract's kernel choice goes: architecture, model (x86 `model name`, arm
/// `CPU part`s) and the instruction-set features tract dispatches on after `TRACT_CPU_ISA`.
pub fn cpu_signature() -> String {
    super::tract_setup();
    let isa = tract_onnx::tract_core::tract_linalg::isa::native();
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut model: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("model name") || l.starts_with("CPU part"))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v.trim()))
        .collect();
    model.sort();
    model.dedup();
    format!(
        "{}; {}; tract isa {isa:?}",
        std::env::consts::ARCH,
        model.join(",")
    )
}

/// Loads the model at `path` and builds its explainer. When its sidecar lists `[variants]`, the
/// one `pref` names runs, or under `auto` the fastest on this CPU ([`select`]); the choice is
/// in `model.variant` and logged.
pub fn load_explainer(
    path: &Path,
    opts: &super::LoadOptions,
    pref: VariantPref,
    cache_dir: Option<&Path>,
    ex_opts: &crate::ExplainerOptions,
) -> Result<crate::Explainer> {
    use super::Model;
    use crate::Explainer;
    let Some(cands) = Model::variants(path, opts)? else {
        if let Some(name) = pref.forced() {
            return Err(bad_input(format!(
                "variant {name:?} asked for, but the sidecar of {} lists no [variants]",
                path.display()
            )));
        }
        return Explainer::new(Model::load(path, opts)?, ex_opts);
    };
    let cpu = cpu_signature();
    let ctx = Ctx {
        pref,
        cache_dir,
        cpu: &cpu,
        version: env!("CARGO_PKG_VERSION"),
        budget: TIMING_BUDGET,
    };
    let mut input = None;
    let (mut ex, sel) = select(
        &cands,
        &ctx,
        |c| Explainer::new(Model::load_variant(c, path, opts)?, ex_opts),
        |ex: &Explainer| {
            // A mid-grey frame: the forward pass of these CNNs does not depend on the pixels.
            let input = input.get_or_insert_with(|| {
                let spec = &ex.model.input;
                let img = image::RgbImage::from_pixel(
                    spec.width,
                    spec.height,
                    image::Rgb([128, 128, 128]),
                );
                super::preprocess::to_tensor(&img, spec)
            });
            Ok(ex.forward(input)?.ms)
        },
    )?;
    tracing::info!(
        "model {}: variant {} on {cpu}",
        path.display(),
        sel.describe()
    );
    ex.model.variant = Some(sel);
    Ok(ex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn times(v: &[(&str, f64)]) -> BTreeMap<String, f64> {
        v.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    fn cands() -> Vec<Candidate> {
        ["f32", "int8"]
            .into_iter()
            .map(|n| Candidate {
                name: n,
                path: PathBuf::from(format!("m-{n}.onnx")),
                sha256: format!("{n}-sha"),
            })
            .collect()
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("inspectd-variant-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_fastest_median_wins() {
        assert_eq!(
            fastest(&times(&[("f32", 9.1), ("int8", 5.4)])),
            Some("int8")
        );
        // The AVX2-only box of issue #12.
        assert_eq!(
            fastest(&times(&[("f32", 11.1), ("int8", 594.0)])),
            Some("f32")
        );
        assert_eq!(fastest(&times(&[("f32", 5.0), ("int8", 5.0)])), Some("f32"));
        assert_eq!(
            fastest(&times(&[("f32", f64::NAN), ("int8", 7.0)])),
            Some("int8")
        );
        assert_eq!(fastest(&BTreeMap::new()), None);
    }

    #[test]
    fn the_cache_key_changes_with_files_cpu_and_version() {
        let c = cands();
        let k = cache_key(&c, "x86_64; AMD EPYC; tract isa x86_64,avx2", "0.1.0");
        assert_eq!(k.len(), 64);
        assert_eq!(
            k,
            cache_key(&c, "x86_64; AMD EPYC; tract isa x86_64,avx2", "0.1.0")
        );
        assert_ne!(
            k,
            cache_key(&c, "x86_64; AMD EPYC; tract isa x86_64,avx", "0.1.0")
        );
        assert_ne!(
            k,
            cache_key(&c, "x86_64; AMD EPYC; tract isa x86_64,avx2", "0.1.1")
        );
        let mut other = c.clone();
        other[1].sha256 = "changed".into();
        assert_ne!(
            k,
            cache_key(&other, "x86_64; AMD EPYC; tract isa x86_64,avx2", "0.1.0")
        );
        assert!(cache_file(Path::new("/var/lib/inspectd"), &k)
            .to_string_lossy()
            .starts_with("/var/lib/inspectd/variant-"));
    }

    #[test]
    fn a_cache_file_round_trips_and_anything_else_is_a_miss() {
        let sel = Selection {
            name: "int8".into(),
            forward_ms: times(&[("f32", 9.1), ("int8", 5.4)]),
            how: How::Timed,
        };
        let text = cache_text("k1", "cpu", &sel);
        let back = parse_cache(&text, "k1").unwrap();
        assert_eq!(back.name, "int8");
        assert_eq!(back.forward_ms, sel.forward_ms);
        assert_eq!(back.how, How::Cached);
        assert_eq!(parse_cache(&text, "k2"), None, "another key");
        assert_eq!(parse_cache("", "k1"), None);
        assert_eq!(parse_cache("{\"key\": \"k1\"}", "k1"), None);
        let not_timed = r#"{"key":"k1","chosen":"fp16","forward_ms":{"f32":9.1}}"#;
        assert_eq!(parse_cache(not_timed, "k1"), None);
        let negative = r#"{"key":"k1","chosen":"f32","forward_ms":{"f32":-1.0}}"#;
        assert_eq!(parse_cache(negative, "k1"), None);
        let minimal = r#"{"key":"k1","chosen":"f32","forward_ms":{"f32":3.0,"int8":4.0}}"#;
        assert_eq!(parse_cache(minimal, "k1").unwrap().name, "f32");
    }

    #[test]
    fn the_cli_cache_lives_under_xdg_then_home_then_tmp() {
        let t = Path::new("/tmp");
        let (x, h) = (Path::new("/x"), Path::new("/home/u"));
        assert_eq!(cli_cache_dir(Some(x), Some(h), t), Path::new("/x/inspectd"));
        assert_eq!(
            cli_cache_dir(None, Some(h), t),
            Path::new("/home/u/.cache/inspectd")
        );
        // A relative XDG_CACHE_HOME is invalid by the spec and ignored.
        assert_eq!(
            cli_cache_dir(Some(Path::new("rel")), Some(h), t),
            Path::new("/home/u/.cache/inspectd")
        );
        assert_eq!(
            cli_cache_dir(None, None, t),
            Path::new("/tmp/inspectd-cache")
        );
    }

    #[test]
    fn timing_alternates_and_stays_within_the_budget() {
        let order = std::cell::RefCell::new(vec![]);
        let (f, i) = (11.0, 594.0);
        let items = [("f32", &f), ("int8", &i)];
        let med = time_alternating(
            &items,
            |ms: &f64| {
                order.borrow_mut().push(*ms);
                Ok(*ms)
            },
            Duration::from_secs(2),
            MAX_RUNS,
        )
        .unwrap();
        assert_eq!(med, times(&[("f32", 11.0), ("int8", 594.0)]));
        let order = order.into_inner();
        assert_eq!(&order[..4], &[11.0, 594.0, 11.0, 594.0], "ABAB");
        let spent: f64 = order.iter().sum();
        assert!(spent <= 2000.0 + 11.0 + 594.0, "{spent} ms");
        let fast_runs = order.iter().filter(|&&m| m == 11.0).count();
        assert!((8..=1 + MAX_RUNS).contains(&fast_runs), "{fast_runs}");
        let slow_runs = order.iter().filter(|&&m| m == 594.0).count();
        assert_eq!(slow_runs, 1 + 2, "warm-up, then two that fit in 2 s");
        // A variant slower than the whole budget still gets exactly one timed run.
        let slow = 5000.0;
        let n = Cell::new(0);
        let med = time_alternating(
            &[("int8", &slow)],
            |ms: &f64| {
                n.set(n.get() + 1);
                Ok(*ms)
            },
            Duration::from_secs(2),
            MAX_RUNS,
        )
        .unwrap();
        assert_eq!((med["int8"], n.get()), (5000.0, 2));
    }

    fn ctx(pref: VariantPref, dir: Option<&Path>) -> Ctx<'_> {
        Ctx {
            pref,
            cache_dir: dir,
            cpu: "test-cpu",
            version: "test",
            budget: Duration::from_secs(2),
        }
    }

    /// Loading gives the candidate's name; timing says int8 is faster (a VNNI box).
    fn load(c: &Candidate) -> Result<&'static str> {
        Ok(c.name)
    }
    fn vnni(e: &&'static str) -> Result<f64> {
        Ok(if *e == "int8" { 5.4 } else { 9.1 })
    }

    #[test]
    fn a_forced_variant_runs_without_timing() {
        for (pref, want) in [(VariantPref::F32, "f32"), (VariantPref::Int8, "int8")] {
            let (e, sel) = select(
                &cands(),
                &ctx(pref, None),
                load,
                |_: &&str| -> Result<f64> { panic!("a forced variant is not timed") },
            )
            .unwrap();
            assert_eq!((e, sel.name.as_str(), sel.how), (want, want, How::Forced));
        }
        let only_f32 = &cands()[..1];
        let err = select(only_f32, &ctx(VariantPref::Int8, None), load, vnni).unwrap_err();
        assert!(err.to_string().contains("int8"), "{err}");
        assert!(crate::error::is_bad_input(&err));
    }

    #[test]
    fn auto_times_once_then_uses_the_cache() {
        let dir = tmp("auto");
        let runs = Cell::new(0);
        let timed = |e: &&'static str| {
            runs.set(runs.get() + 1);
            vnni(e)
        };
        let (e, sel) = select(&cands(), &ctx(VariantPref::Auto, Some(&dir)), load, timed).unwrap();
        assert_eq!((e, sel.how), ("int8", How::Timed));
        assert_eq!(sel.forward_ms, times(&[("f32", 9.1), ("int8", 5.4)]));
        assert!(runs.get() >= 4);
        let no_timing = |_: &&str| -> Result<f64> { panic!("a cache hit is not timed") };
        let (e, sel2) = select(
            &cands(),
            &ctx(VariantPref::Auto, Some(&dir)),
            load,
            no_timing,
        )
        .unwrap();
        assert_eq!((e, sel2.how), ("int8", How::Cached));
        assert_eq!(sel2.forward_ms, sel.forward_ms);
        // Forcing keeps the cached times for the status, and still does not time.
        let (e, sel3) = select(
            &cands(),
            &ctx(VariantPref::F32, Some(&dir)),
            load,
            no_timing,
        )
        .unwrap();
        assert_eq!((e, sel3.how), ("f32", How::Forced));
        assert_eq!(sel3.forward_ms, sel.forward_ms);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn auto_uses_a_pre_seeded_cache_without_timing() {
        let dir = tmp("seeded");
        let key = cache_key(&cands(), "test-cpu", "test");
        // Seeded with the AVX2 box's figures: f32 wins though this fake CPU would pick int8.
        let seeded = Selection {
            name: "f32".into(),
            forward_ms: times(&[("f32", 11.1), ("int8", 594.0)]),
            how: How::Timed,
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            cache_file(&dir, &key),
            cache_text(&key, "test-cpu", &seeded),
        )
        .unwrap();
        let no_timing = |_: &&str| -> Result<f64> { panic!("a cache hit is not timed") };
        let (e, sel) = select(
            &cands(),
            &ctx(VariantPref::Auto, Some(&dir)),
            load,
            no_timing,
        )
        .unwrap();
        assert_eq!((e, sel.how), ("f32", How::Cached));
        assert_eq!(sel.forward_ms["int8"], 594.0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_cache_does_not_fail_the_load() {
        // A file where the folder should be: create_dir_all fails.
        let file = tmp("unwritable");
        std::fs::write(&file, b"not a folder").unwrap();
        let (e, sel) = select(&cands(), &ctx(VariantPref::Auto, Some(&file)), load, vnni).unwrap();
        assert_eq!((e, sel.how), ("int8", How::Timed));
        let _ = std::fs::remove_file(&file);
    }
}
