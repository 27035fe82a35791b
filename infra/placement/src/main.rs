//! `coldpath plan` and `coldpath check`: see `coldpath_placement::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match coldpath_placement::cli::run(&args) {
        Ok(outcome) => {
            print!("{}", outcome.stdout);
            eprint!("{}", outcome.stderr);
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            eprintln!("coldpath: {e:#}");
            ExitCode::from(2)
        }
    }
}
