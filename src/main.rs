// A double-clicked release build on Windows opens no console window; CLI subcommands attach to
// the parent terminal's console instead (see `attach_parent_console`).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    #[cfg(windows)]
    attach_parent_console();
    use_physical_cores();
    easel::cli::main()
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
