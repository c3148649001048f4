//! Headless subcommands. Everything the studio can do, scripts and tests can do from here,
//! through the same library API.

mod bench;
mod bench_gallery;
mod bench_img2img;
mod bench_load;
mod bench_lora;
mod bench_model;
mod bench_vae;
mod generate;
mod index;
mod lora;
mod models;
mod search;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "easel",
    version,
    about = "A native desktop studio for Stable Diffusion"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate one image from a text prompt (and, for img2img, a picture).
    Generate(Box<generate::GenerateArgs>),
    /// Measure text encoding, a UNet step, VAE decode and a preview on SD 1.5-sized weights.
    Bench(bench::BenchArgs),
    /// Measure the bundled default model: scene prompts read back from pixels at several CFG
    /// scales, the striped LoRA on and off, CLIP retrieval on held-out scenes, time per image.
    BenchModel(bench_model::BenchModelArgs),
    /// Index image folders for CLIP search (incremental; safe to interrupt and re-run).
    Index(index::IndexArgs),
    /// Search the gallery index by text, by image, or both (`red car - night`, `2:sunset + ./ref.png`).
    Search(search::SearchArgs),
    /// List a folder of LoRA adapters, or describe one (`easel lora list [DIR]`, `easel lora info FILE`).
    Lora(lora::LoraArgs),
    /// The model library: every model and VAE in a set of folders
    /// (`easel models list [DIR…] [--json] [--hash]`).
    Models(models::ModelsArgs),
    /// Open the studio window (what `easel` with no subcommand does).
    Studio(crate::app::StudioArgs),
    /// Measure the studio window: cold start, UI frame time while generating, preview and
    /// cancel latency. Prints a JSON report and closes.
    BenchUi(crate::app::BenchUiArgs),
    /// Drive the studio (headless, real worker) through hundreds of generations with live
    /// slider changes, LoRA toggles, cancels, queue reorders and gallery indexing; report
    /// memory, threads and open files, and check every image and the index. JSON on stdout.
    BenchSoak(crate::app::SoakArgs),
}

/// Parses the command line and runs it; errors are printed as one line on stderr.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    let result = match cli.command {
        Some(Command::Generate(args)) => generate::run(*args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::BenchModel(args)) => bench_model::run(args),
        Some(Command::Index(args)) => index::run(args),
        Some(Command::Search(args)) => search::run(args),
        Some(Command::Lora(args)) => lora::run(args),
        Some(Command::Models(args)) => models::run(args),
        Some(Command::Studio(args)) => crate::app::run(args),
        Some(Command::BenchUi(args)) => crate::app::run_bench(args),
        Some(Command::BenchSoak(args)) => crate::app::run_soak(args),
        None => crate::app::run(crate::app::StudioArgs::default()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap prints them; a usage error becomes one `error: …` line like
/// every other error (clap's own spreads it over a usage block and a tip), keeping clap's
/// exit status (2).
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let text = e.to_string();
    // The first paragraph is the message; the rest is usage and tips.
    let message = text.split("\n\n").next().unwrap_or_default();
    let message = message.trim().trim_start_matches("error:");
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {message} (see --help)");
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// The error and its causes on one line, skipping causes already quoted by their parent.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}
