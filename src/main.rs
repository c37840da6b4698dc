#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    credswap::cli::main()
}
