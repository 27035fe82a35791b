//! The binary's arguments: the shared Lambda / `invoke <EVENT_FILE>` modes plus `worker`.

use coldpath_runtime::Mode;

/// The usage line for every way the binary runs.
pub const USAGE: &str =
    "usage: captioning [invoke <EVENT_FILE> | prepare <OUT_DIR> | worker | contract]";

/// How the binary was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Lambda (no arguments) or local `invoke <EVENT_FILE>`, as every coldpath function.
    Function(Mode),
    /// `worker`: consume `CAPTIONING_QUEUE_URL` until SIGTERM or idle.
    Worker,
}

/// Parses the arguments after the program name; the error is the text to print (usage and the
/// problem).
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    match args {
        [cmd] if cmd == "worker" => Ok(Command::Worker),
        [cmd, rest @ ..] if cmd == "worker" => Err(format!(
            "{USAGE}\nworker takes no arguments (it is configured by the environment), found: {}",
            rest.join(" ")
        )),
        _ => Mode::from_args("captioning", args)
            .map(Command::Function)
            .map_err(|e| {
                // The shared error's first line is its own usage line, which does not know about
                // `worker`; keep only the problem under ours.
                let text = e.to_string();
                let problem = text.lines().skip(1).collect::<Vec<_>>().join("\n");
                format!("{USAGE}\n{problem}")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_all_three_modes() {
        assert_eq!(parse_args(&[]), Ok(Command::Function(Mode::Lambda)));
        assert_eq!(
            parse_args(&args(&["invoke", "e.json"])),
            Ok(Command::Function(Mode::Invoke("e.json".into())))
        );
        assert_eq!(parse_args(&args(&["worker"])), Ok(Command::Worker));
    }

    #[test]
    fn usage_errors_list_every_mode() {
        for bad in [&["invoke"][..], &["worker", "now"], &["serve"]] {
            let err = parse_args(&args(bad)).unwrap_err();
            assert!(err.starts_with(USAGE), "{bad:?}: {err}");
            assert_eq!(err.lines().count(), 2, "{bad:?}: {err}");
        }
        assert!(
            parse_args(&args(&["invoke"]))
                .unwrap_err()
                .contains("invoke needs an event file")
        );
    }
}
