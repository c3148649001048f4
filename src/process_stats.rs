//! What the operating system says about this process: resident memory, threads, open files.
//! Benchmarks and the soak read them; where `/proc` does not exist (macOS, Windows) every
//! reading is `None`.

/// A `/proc/self/status` memory line in MiB: `"VmRSS:"` (resident now), `"VmHWM:"` (peak
/// resident), `"RssAnon:"` (resident and not file-backed: the tensors themselves).
pub fn status_mib(key: &str) -> Option<f64> {
    status_number(key).map(|kib| kib as f64 / 1024.0)
}

/// Threads of this process.
pub fn threads() -> Option<u64> {
    status_number("Threads:")
}

/// Open file descriptors of this process.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

fn status_number(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// This process's threads counted by name (`/proc/self/task/*/comm`), to tell a pool that
/// breathes from a leak.
pub fn threads_by_name() -> Option<std::collections::BTreeMap<String, u64>> {
    let mut names = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        // A thread that ended since the listing has no comm: not counted.
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm")) {
            *names.entry(name.trim().to_string()).or_insert(0) += 1;
        }
    }
    Some(names)
}
