//! A reply's text as its tokens arrive: what can be sent now, and where a stop string ends it.
//!
//! The whole reply is decoded again at each token (replies are short; this keeps multi-token characters
//! and the tokenizer's space handling right). Text is held back while it ends in an incomplete character
//! or in what could be the start of a stop string, so a client never sees text that a stop string removes.

/// The text state of one reply.
#[derive(Clone, Debug, Default)]
pub struct ReplyText {
    stops: Vec<String>,
    sent: usize,
    text: String,
}

/// What one more token gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// Text to send now (may be empty).
    pub text: String,
    /// Whether a stop string ended the reply.
    pub stopped: bool,
}

impl ReplyText {
    /// A reply ended by any of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        ReplyText { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Default::default() }
    }

    /// Takes the reply's decoded text so far; returns what can be sent.
    pub fn update(&mut self, decoded: String) -> Delta {
        self.text = decoded;
        if let Some(end) = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            let end = end.max(self.sent);
            let text = self.slice(end);
            self.text.truncate(end);
            return Delta { text, stopped: true };
        }
        let mut safe = self.text.len();
        if self.text.ends_with('\u{FFFD}') {
            safe -= '\u{FFFD}'.len_utf8();
        }
        // Hold back the longest tail that begins a stop string.
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && self.text[..safe].ends_with(&s[..k]) {
                    safe = safe.min(self.text[..safe].len() - k);
                    break;
                }
            }
        }
        Delta { text: self.slice(safe), stopped: false }
    }

    /// Everything not sent yet (the reply ended without a stop string).
    pub fn finish(&mut self) -> String {
        let end = self.text.len();
        self.slice(end)
    }

    /// The reply's text up to where it ended.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn slice(&mut self, end: usize) -> String {
        let mut from = self.sent.min(end);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let mut end = end;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = self.text[from..end.max(from)].to_string();
        self.sent = end.max(self.sent);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], steps: &[&str]) -> (Vec<String>, bool, String) {
        let mut r = ReplyText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for s in steps {
            let d = r.update(s.to_string());
            out.push(d.text);
            if d.stopped {
                return (out, true, r.text().to_string());
            }
        }
        out.push(r.finish());
        (out, false, r.text().to_string())
    }

    #[test]
    fn text_flows_without_stops() {
        let (out, stopped, _) = run(&[], &["He", "Hello", "Hello wor", "Hello world"]);
        assert_eq!(out.concat(), "Hello world");
        assert!(!stopped);
    }

    #[test]
    fn a_stop_string_ends_the_reply_and_is_never_sent() {
        let (out, stopped, text) = run(&["END"], &["ab", "abE", "abEN", "abENDxyz"]);
        assert!(stopped);
        assert_eq!(out, vec!["ab", "", "", ""]);
        assert_eq!(text, "ab");
    }

    #[test]
    fn a_held_back_prefix_is_released_when_it_is_not_a_stop() {
        let (out, stopped, _) = run(&["END"], &["abE", "abEx"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "abEx");
        assert_eq!(out[0], "ab");
    }

    #[test]
    fn an_incomplete_character_waits() {
        let (out, _, _) = run(&[], &["a\u{FFFD}", "aé"]);
        assert_eq!(out, vec!["a", "é", ""]);
    }
}
