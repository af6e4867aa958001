//! The end-of-run check of hack/test.sh (`taimatsu-no-leftovers`), run on commands that
//! orphan a process the way a test that forgets its server does.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn guarded(script: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taimatsu-no-leftovers")).args(["sh", "-c", script]).output().unwrap()
}

fn alive(pid: i32) -> bool {
    // Only the stat of a live or zombie process exists; a reaped one is gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

#[test]
fn a_process_that_outlives_the_command_fails_the_run_and_is_killed() {
    // The shell exits at once; its background child is orphaned, as a server would be.
    let out = guarded("sleep 300 & echo $!");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(stderr.contains(&format!("pid {pid} sleep 300")), "the leftover is named: {stderr}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "the leftover {pid} was killed");
}

#[test]
fn grandchildren_orphaned_twice_are_found_too() {
    // The middle shell exits as well: the sleep is two generations away from the guard.
    let out = guarded("sh -c 'sleep 300 &' & wait");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sleep 300"));
}

#[test]
fn a_clean_command_passes_and_a_failing_one_keeps_its_status() {
    assert_eq!(guarded("true").status.code(), Some(0));
    assert_eq!(guarded("exit 3").status.code(), Some(3));
}

#[test]
fn a_process_that_exits_within_the_grace_period_is_not_a_leftover() {
    let out = guarded("sleep 1 &");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
