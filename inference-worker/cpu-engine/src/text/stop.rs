//! Stop strings. Text is streamed as it is generated, but a stop string may arrive split
//! over several tokens, and the stop string itself must never reach the client. So any tail
//! of the text that could still grow into a stop string is held back until it either
//! completes one (generation ends, the held text is dropped) or cannot anymore (it is sent).

/// What the matcher lets through for one piece of new text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// Text safe to send now (may be empty while text is held back).
    Continue(String),
    /// A stop string was completed: send this text (everything before it) and finish.
    Stopped(String),
}

#[derive(Debug)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: a prefix of some stop string.
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored: they would match before any text.
    pub(crate) fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    pub(crate) fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_owned());
        }
        self.held.push_str(text);
        // The earliest stop string wins; only the held text needs searching, because any
        // occurrence starting earlier would have been held back already.
        if let Some(at) = self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min() {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return StopOutcome::Stopped(before);
        }
        let keep = self.longest_stop_prefix_suffix();
        let release = self.held.len() - keep;
        let out = self.held[..release].to_owned();
        self.held.drain(..release);
        StopOutcome::Continue(out)
    }

    /// Generation ended for another reason: the held text was not a stop string after all.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop
    /// string. Such a suffix starts at a character boundary, since stop strings are valid
    /// UTF-8 and so begin with a character's first byte.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let held = self.held.as_bytes();
        self.stops
            .iter()
            .map(|stop| {
                let stop = stop.as_bytes();
                let max = held.len().min(stop.len().saturating_sub(1));
                (1..=max).rev().find(|&n| held[held.len() - n..] == stop[..n]).unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn passes_text_through_without_stops() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("hello"), StopOutcome::Continue("hello".into()));
    }

    #[test]
    fn stops_across_pieces_without_emitting_the_stop_string() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("abc E"), StopOutcome::Continue("abc ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue("".into()));
        assert_eq!(m.push("Dxyz"), StopOutcome::Stopped("".into()));
    }

    #[test]
    fn releases_text_that_stops_being_a_prefix() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("EN"), StopOutcome::Continue("".into()));
        assert_eq!(m.push("d"), StopOutcome::Continue("ENd".into()));
        assert_eq!(m.push("E"), StopOutcome::Continue("".into()));
        assert_eq!(m.finish(), "E");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = matcher(&["world", "lo"]);
        assert_eq!(m.push("hello world"), StopOutcome::Stopped("hel".into()));
    }

    #[test]
    fn multibyte_prefixes() {
        let mut m = matcher(&["→stop"]);
        assert_eq!(m.push("a→"), StopOutcome::Continue("a".into()));
        assert_eq!(m.push("s"), StopOutcome::Continue("".into()));
        assert_eq!(m.push("x"), StopOutcome::Continue("→sx".into()));
    }
}
