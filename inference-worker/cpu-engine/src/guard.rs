//! Keeps panics from native-binding wrappers inside this crate.
//!
//! llama-cpp-2 and candle `expect` on conditions we cannot always rule out up front (absurdly
//! large inputs, unexpected return codes). The worker's HTTP layer must see an error, never a
//! panic, so calls that could hit those paths go through [`no_panic`].

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`; a panic becomes `Err` with the panic message.
///
/// `AssertUnwindSafe` is sound here because callers only pass closures over read-only model
/// handles or state they discard on error.
pub(crate) fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        assert_eq!(no_panic(|| 7), Ok(7));
        let err = no_panic(|| -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(err, "boom 1");
    }
}
