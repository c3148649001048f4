// A double-clicked release build on Windows opens no console window; CLI subcommands attach to
// the parent terminal's console instead (see `attach_parent_console`).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    #[cfg(windows)]
    attach_parent_console();
    use_physical_cores();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    keep_freed_memory();
    easel::cli::main()
}

/// glibc hands every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB)
/// straight to the kernel and unmaps it on free, and trims the heap's top as soon as it is
/// free. Every layer's output is such a buffer, so each one came back as fresh pages: a page
/// fault per 4 KiB on first touch, and a TLB flush on every core when it was unmapped. Keeping
/// freed memory in the heap for the next layer took a 256² VAE decode from about 280 000 page
/// faults to 50 000 (`perf stat -e page-faults easel bench --stages vae-decode`).
/// The cost: memory freed after a generation stays with the process for the next one.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// One compute thread per physical core unless `RAYON_NUM_THREADS` says otherwise: two
/// hyper-threads of a core share its vector units, so a second gemm thread there only adds
/// contention. Set before any thread starts; rayon's pool and candle both read the variable.
fn use_physical_cores() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = num_cpus::get_physical().max(1);
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
}

/// With the "windows" subsystem a process has no console, so `easel generate …` typed in
/// cmd or PowerShell would print nothing. Attaching to the parent's console (when there is
/// one: a terminal, not Explorer) makes stdout/stderr reach it again.
#[cfg(windows)]
fn attach_parent_console() {
    #[link(name = "kernel32")]
    extern "system" {
        fn AttachConsole(process_id: u32) -> i32;
    }
    const ATTACH_PARENT_PROCESS: u32 = u32::MAX;
    if std::env::args_os().len() > 1 {
        // SAFETY: a plain Win32 call with a constant argument; failure (no parent console)
        // is harmless and leaves the process as it was.
        unsafe {
            AttachConsole(ATTACH_PARENT_PROCESS);
        }
    }
}
