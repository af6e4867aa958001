//! The one field manager name of every write the operator makes (server-side applies,
//! status patches, Events' reporting controller), so that `kubectl get -o yaml
//! --show-managed-fields` names the operator, and its applies own exactly its fields.

pub const FIELD_MANAGER: &str = "taimatsu-operator";
