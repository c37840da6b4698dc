//! The command line. `anyhow` lives here, at the edge; the library below returns typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ProcessEnv};

/// Exit code for an invalid configuration.
pub const EXIT_CONFIG: u8 = 78; // EX_CONFIG from sysexits.h, what systemd and operators expect

#[derive(Parser, Debug)]
#[command(
    name = "credswap",
    version,
    about = "Live, verified PostgreSQL pools with rotating credentials"
)]
struct Cli {
    /// Configuration file (default: $CREDSWAP_CONFIG, else DATABASE_URL alone).
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the configuration and print it as credswap will use it, secrets redacted.
    CheckConfig {
        /// The file to check (same as --config).
        file: Option<PathBuf>,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(file.or(cli.config)),
    }
}

fn check_config(file: Option<PathBuf>) -> ExitCode {
    match Config::load(file.as_deref(), &ProcessEnv) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            let origin = config.file.as_ref().map_or_else(
                || "the environment".to_string(),
                |f| f.display().to_string(),
            );
            println!("# credswap: configuration from {origin} is valid");
            print!("{}", config::render_effective(&config));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("credswap: the configuration is not valid:");
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
