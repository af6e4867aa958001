//! Whole-object fixture tests: for each case in `cases`, every child `build` returns and
//! the revision hash, each against its own reviewed fixture (see `fixture`), one test
//! per fixture so that a change shows every object it touches at once.

use crate::build::{Children, build};

use super::{cases, fixture};

/// For each case, a module of tests named after the objects they check:
/// `<case>::<child>` compares `build(case).<child>` with `fixtures/<case>/<child>.json`,
/// `<case>::revision_hash` the case's revision hash with `fixtures/<case>/revision_hash.json`.
macro_rules! fixture_tests {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            use super::*;

            fixture_tests!(@children $case: service_account, manifest, workload, service, ingress_policy, egress_policy, disruption_budget);

            /// The hash names every revision's objects: a change to it rolls out every
            /// deployment, so it is pinned like the objects themselves.
            #[test]
            fn revision_hash() {
                fixture::check(stringify!($case), "revision_hash", &cases::$case().revision_hash());
            }
        }
    )+};
    (@children $case:ident: $($child:ident),+) => {$(
        #[test]
        fn $child() {
            let case = cases::$case();
            fixture::check(stringify!($case), stringify!($child), &build(&case.inputs()).$child);
        }
    )+};
}

fixture_tests!(tp2_h100, builtin_cpu, single_gpu_pvc);

/// Names every field of `Children` without `..`, so that a new child fails to compile here
/// until it is added to the list of fixture tests above.
#[test]
fn every_child_has_a_fixture_test() {
    let Children {
        service_account: _,
        manifest: _,
        workload: _,
        service: _,
        ingress_policy: _,
        egress_policy: _,
        disruption_budget: _,
    } = build(&cases::tp2_h100().inputs());
}
