// A double-clicked release build on Windows opens no console window; CLI subcommands attach to
// the parent terminal's console instead (see `attach_parent_console`).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    #[cfg(windows)]
    attach_parent_console();
    easel::cli::main()
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
