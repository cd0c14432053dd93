//! One way to say an error with its causes, for every crate's logs and answers.

/// An error and its causes on one line; a cause the message above already ends
/// with (`"... failed: {source}"`) is not said twice.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Msg(&'static str, #[source] Option<Box<Msg>>);

    #[test]
    fn causes_follow_once() {
        let inner = Msg("connection refused", None);
        let said = Msg("connect failed: connection refused", Some(Box::new(inner)));
        assert_eq!(chain(&said), "connect failed: connection refused");
        let bare = Msg("request failed", Some(Box::new(Msg("timed out", None))));
        assert_eq!(chain(&bare), "request failed: timed out");
    }
}
