//! The switchboard binary: parse the command line, set up logging, and call
//! into the library. No protocol logic lives here.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
