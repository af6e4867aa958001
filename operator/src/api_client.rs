//! The operator's API client and watches, with every request bounded in time.
//!
//! kube's client sets no read timeout (it would cut exec sessions), and a watcher's initial
//! list and the request that starts a watch are then awaited for as long as the API server
//! keeps the connection open without answering; an open watch is given up only 5 s after
//! its server-side timeout, 290 s by default. Around API server restarts that is how a
//! replica's controller was seen (tests/leader_restart.rs) to take over leadership and then
//! reconcile nothing for three minutes, with no error to retry on. The operator runs no
//! exec sessions, so it bounds every response: watches are ended by the server after
//! [`WATCH_TIMEOUT_SECS`] (and resumed from their resource version, no relist), and no
//! response may stay silent for longer than [`READ_TIMEOUT`], which is longer than a
//! healthy watch ever is.

use std::time::Duration;

use kube::runtime::watcher;

/// How long the API server keeps one watch request open before ending it cleanly.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// The longest a response may go without a byte: past a watch's whole length, so only a
/// request the server does not answer is cut (and then retried by its caller).
pub const READ_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 15);

/// The client from the environment (in-cluster, or KUBECONFIG), with [`READ_TIMEOUT`].
pub async fn client() -> kube::Result<kube::Client> {
    let mut config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    bounded(&mut config);
    kube::Client::try_from(config)
}

/// Sets the read timeout, counted from when a request is sent (not from when its pooled
/// connection went idle, which would cut a request that had just been sent).
pub fn bounded(config: &mut kube::Config) {
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
}

/// Every watch of the operator: ended by the server after [`WATCH_TIMEOUT_SECS`].
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_watch_ends_before_the_read_timeout_cuts_it() {
        assert!(Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + Duration::from_secs(10) < READ_TIMEOUT);
        assert_eq!(watch_config().timeout, Some(WATCH_TIMEOUT_SECS));
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        bounded(&mut config);
        assert_eq!((config.read_timeout, config.reset_reader_on_write), (Some(READ_TIMEOUT), true));
    }
}
