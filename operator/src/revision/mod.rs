//! Revisions: the immutable, numbered history of what a ModelDeployment served, and the
//! rollout decisions taken on it.

pub mod analysis;
pub mod plan;
pub mod record;
pub mod store;

pub use record::{Outcome, RevisionRecord, Snapshot};
