//! `easel bench --load A --load B`: cold model loads side by side, and `easel bench --library N`:
//! the model library over N checkpoints, cold.
//!
//! "Cold" means from disk: before each run the model's files are dropped from the OS page
//! cache (`posix_fadvise(DONTNEED)`, which needs no privileges; on other systems the first run
//! is the cold one). Each load runs in a fresh process so its peak RSS is its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::models::checkpoint::detect::{UNET_PREFIX, VAE_PREFIX};
use crate::models::tensor_file::TensorFile;

/// What one load in a child process reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    pub load_ms: f64,
    pub peak_rss_mib: f64,
}

/// The child: load once, print the report as JSON.
pub fn child(path: &Path) -> Result<()> {
    let t = Instant::now();
    let pipeline = crate::diffusion::Pipeline::load(path, &candle_core::Device::Cpu)?;
    let load_ms = super::bench::ms(t);
    let report = LoadReport {
        load_ms,
        peak_rss_mib: super::bench::peak_rss_mib(),
    };
    drop(pipeline);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The parent: `reps` cold loads of each model, alternating, medians and ratios.
pub fn run(models: &[PathBuf], reps: usize, json: bool) -> Result<()> {
    let exe = std::env::current_exe().context("finding the easel binary")?;
    let mut results: Vec<Vec<LoadReport>> = vec![Vec::new(); models.len()];
    for _ in 0..reps.max(1) {
        for (i, m) in models.iter().enumerate() {
            let evicted = evict(m);
            let out = Command::new(&exe)
                .args(["bench", "--load-child"])
                .arg(m)
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !out.status.success() {
                bail!(
                    "{}: {}",
                    m.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let r: LoadReport = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("{}: unreadable child report", m.display()))?;
            if !evicted {
                eprintln!(
                    "note: page cache not evicted for {} (not Linux?)",
                    m.display()
                );
            }
            results[i].push(r);
        }
    }
    let load = uptime_load();
    let rows: Vec<serde_json::Value> = models
        .iter()
        .zip(&results)
        .map(|(m, rs)| {
            let load_ms = median(rs.iter().map(|r| r.load_ms).collect());
            let rss = median(rs.iter().map(|r| r.peak_rss_mib).collect());
            let f32_mib = f32_weight_bytes(m).unwrap_or(0) as f64 / (1 << 20) as f64;
            serde_json::json!({
                "model": m, "load_ms": load_ms, "peak_rss_mib": rss,
                "f32_weights_mib": f32_mib, "rss_over_f32_weights": rss / f32_mib,
                "runs_ms": rs.iter().map(|r| r.load_ms).collect::<Vec<_>>(),
            })
        })
        .collect();
    let first_ms = rows[0]["load_ms"].as_f64().unwrap_or(1.0);
    if json {
        println!(
            "{}",
            serde_json::json!({"loads": rows, "reps": reps, "loadavg": load})
        );
        return Ok(());
    }
    println!("cold loads, {reps} each, alternating; load average {load}");
    println!(
        "{:>10}  {:>8}  {:>12}  {:>10}  {:>9}  model",
        "load s", "× first", "peak RSS MiB", "f32 MiB", "RSS/f32"
    );
    for r in &rows {
        let ms = r["load_ms"].as_f64().unwrap_or(0.0);
        println!(
            "{:>10.2}  {:>8.2}  {:>12.0}  {:>10.0}  {:>9.2}  {}",
            ms / 1e3,
            ms / first_ms,
            r["peak_rss_mib"].as_f64().unwrap_or(0.0),
            r["f32_weights_mib"].as_f64().unwrap_or(0.0),
            r["rss_over_f32_weights"].as_f64().unwrap_or(0.0),
            r["model"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `easel bench --library N --library-from FILE`: N checkpoints with FILE's header and size,
/// their data a hole (nothing on disk), listed cold.
pub fn library(count: usize, from: &Path, work: &Path, json: bool) -> Result<()> {
    let header = read_header_bytes(from)?;
    let len = std::fs::metadata(from)?.len();
    let dir = work.join(format!("library-{count}"));
    std::fs::create_dir_all(&dir)?;
    for i in 0..count {
        let p = dir.join(format!("checkpoint-{i:04}.safetensors"));
        if std::fs::metadata(&p).map(|m| m.len()).ok() != Some(len) {
            let f = std::fs::File::create(&p)?;
            std::io::Write::write_all(&mut &f, &header)?;
            f.set_len(len)?;
            f.sync_all()?;
        }
    }
    let evicted = evict(&dir);
    let t = Instant::now();
    let entries = crate::models::library::scan(std::slice::from_ref(&dir));
    let cold_ms = super::bench::ms(t);
    let t = Instant::now();
    crate::models::library::scan(std::slice::from_ref(&dir));
    let warm_ms = super::bench::ms(t);
    let runnable = entries.iter().filter(|e| e.runnable).count();
    if json {
        println!(
            "{}",
            serde_json::json!({"checkpoints": count, "listed": entries.len(), "runnable": runnable,
                "cold_ms": cold_ms, "warm_ms": warm_ms, "evicted": evicted,
                "header_bytes": header.len(), "loadavg": uptime_load()})
        );
    } else {
        println!(
            "model library: {count} checkpoints like {} ({} header bytes each): listed {} \
             ({runnable} runnable) in {cold_ms:.0} ms cold{}, {warm_ms:.0} ms warm; load average {}",
            from.display(),
            header.len(),
            entries.len(),
            if evicted { "" } else { " (cache not evicted)" },
            uptime_load()
        );
    }
    Ok(())
}

fn read_header_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n) as usize;
    let mut bytes = n.to_le_bytes().to_vec();
    bytes.resize(8 + n, 0);
    f.read_exact(&mut bytes[8..])?;
    Ok(bytes)
}

/// The model's weights in f32 bytes: what the loaded model holds.
fn f32_weight_bytes(model: &Path) -> Result<u64> {
    let files: Vec<PathBuf> = if model.is_dir() {
        ["unet", "vae", "text_encoder"]
            .iter()
            .flat_map(|c| {
                std::fs::read_dir(model.join(c))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            })
            .collect()
    } else {
        vec![model.to_path_buf()]
    };
    let mut total = 0u64;
    for f in files {
        let file = TensorFile::open(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for (name, t) in &file.tensors {
            let part_of_model = model.is_dir()
                || name.starts_with(UNET_PREFIX)
                || name.starts_with(VAE_PREFIX)
                || name.starts_with("cond_stage_model.");
            if part_of_model && t.dtype.is_float() {
                total += t.numel() as u64 * 4;
            }
        }
    }
    Ok(total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn uptime_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Drops `path` (a file, or every file under a folder) from the page cache. False where the
/// OS offers no way to.
fn evict(path: &Path) -> bool {
    if path.is_dir() {
        let mut all = true;
        if let Ok(read) = std::fs::read_dir(path) {
            for e in read.flatten() {
                all &= evict(&e.path());
            }
        }
        return all;
    }
    evict_file(path)
}

#[cfg(target_os = "linux")]
fn evict_file(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: a plain syscall on a file descriptor we own for the duration of the call.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn evict_file(_path: &Path) -> bool {
    false
}
