//! Runs a command as a child subreaper and reports every process it left behind.
//!
//! A test that starts a server and dies (or forgets it) orphans that server; Linux then
//! hands the orphan to the nearest ancestor marked `PR_SET_CHILD_SUBREAPER` instead of to
//! PID 1. Marking the process that runs the whole test suite makes every orphan of the run
//! a direct child of it, so "no process outlived the run" becomes "once the suite has
//! exited, this process has no children left": no process-tree walk that an orphan (whose
//! parent is gone) could escape. Used by hack/test.sh through `taimatsu-no-leftovers`.

use std::io;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a process gets to finish exiting on its own once the command is done: a
/// parent-death signal or a graceful shutdown already under way is not a leftover.
const GRACE: Duration = Duration::from_secs(3);

/// A process still alive after the command and the grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub pid: i32,
    pub command_line: String,
}

/// What running the command under the guard gave.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    /// Every process that outlived the command (all of them now killed and reaped).
    pub leftovers: Vec<Leftover>,
}

/// Makes this process the subreaper of everything it starts from now on.
#[allow(unsafe_code)]
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag of the calling process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `cmd` to completion, then finds, kills and reaps whatever it left running.
/// [`become_subreaper`] must have been called first, or orphans escape to PID 1.
pub fn run_guarded(mut cmd: Command) -> io::Result<Outcome> {
    let status = cmd.status()?;
    let deadline = Instant::now() + GRACE;
    let mut leftovers = Vec::new();
    loop {
        reap_exited();
        let alive = live_children()?;
        if alive.is_empty() {
            return Ok(Outcome { status, leftovers });
        }
        if Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        // Killing one can orphan its own children to us: the loop finds them next round.
        for child in alive {
            kill(child.pid);
            if !leftovers.iter().any(|l: &Leftover| l.pid == child.pid) {
                leftovers.push(child);
            }
        }
    }
}

/// Children of this process that have not exited (zombies are reaped, not reported).
fn live_children() -> io::Result<Vec<Leftover>> {
    let me = std::process::id() as i32;
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((state, ppid)) = parse_stat(&stat) else { continue };
        if ppid == me && state != 'Z' {
            children.push(Leftover { pid, command_line: command_line(pid) });
        }
    }
    Ok(children)
}

/// The state and parent pid from a `/proc/<pid>/stat` line. The command name is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn command_line(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> =
        raw.split(|b| *b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
    words.join(" ")
}

#[allow(unsafe_code)]
fn kill(pid: i32) {
    // SAFETY: kill(2) on a pid that is our own child (not yet reaped, so not reused).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[allow(unsafe_code)]
fn reap_exited() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG writes only to `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_pid_is_read_after_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parse_stat("4242 (python -m (x)) S 17 4242 4242 0 -1"), Some(('S', 17)));
        assert_eq!(parse_stat("7 (sleep) Z 1 7 7"), Some(('Z', 1)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
