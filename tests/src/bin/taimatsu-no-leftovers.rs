//! `taimatsu-no-leftovers COMMAND [ARGS…]`: runs the command (hack/test.sh gives it the
//! whole `cargo test` run) and fails when any process it started is still alive after it
//! exited. Each leftover is named, then killed, so one forgotten server cannot keep a port
//! (or, with vLLM, GPU memory) into the next run. Exit status: the command's own when it
//! failed; 1 when it passed but left processes behind; 2 when it could not be run.

use std::process::{Command, ExitCode};

use taimatsu_tests::leftovers::{become_subreaper, run_guarded};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: taimatsu-no-leftovers COMMAND [ARGS…]");
        return ExitCode::from(2);
    };
    if let Err(e) = become_subreaper() {
        eprintln!("taimatsu-no-leftovers: cannot become a child subreaper: {e}");
        return ExitCode::from(2);
    }
    let mut cmd = Command::new(&program);
    cmd.args(args);
    let outcome = match run_guarded(cmd) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("taimatsu-no-leftovers: running {}: {e}", program.to_string_lossy());
            return ExitCode::from(2);
        }
    };
    for leftover in &outcome.leftovers {
        eprintln!(
            "taimatsu-no-leftovers: still running after the command exited, killed: pid {} {}",
            leftover.pid, leftover.command_line
        );
    }
    match outcome.status.code() {
        Some(0) if outcome.leftovers.is_empty() => ExitCode::SUCCESS,
        Some(0) => {
            eprintln!(
                "taimatsu-no-leftovers: {} process(es) outlived the command: a test started them and did not stop them",
                outcome.leftovers.len()
            );
            ExitCode::FAILURE
        }
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            eprintln!("taimatsu-no-leftovers: the command was killed by a signal: {}", outcome.status);
            ExitCode::FAILURE
        }
    }
}
