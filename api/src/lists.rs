//! The comma lists of the binaries' flags, which the injector's annotations become:
//! one syntax, split and de-duplicated one way, so an annotation the injector accepts
//! is a list `pillion-init` and the proxy read the same.

use std::fmt;

/// Parses `"a, b,,a"` item by item with `parse`: blanks around an item are trimmed,
/// empty entries dropped and repeats kept once, in the order first given; empty text
/// is the empty list. The first item `parse` refuses is the error.
pub fn parse_list<T: PartialEq, E>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, E> {
    let mut items = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let item = parse(entry)?;
        if !items.contains(&item) {
            items.push(item);
        }
    }
    Ok(items)
}

/// Parses a TCP port, 1 to 65535, with a message that says what to write instead.
pub fn parse_port(text: &str) -> Result<u16, String> {
    let text = text.trim();
    let number: u64 = text.parse().map_err(|_| {
        format!(
            "'{}' is not a port number; use a TCP port from 1 to 65535",
            shorten(text)
        )
    })?;
    match u16::try_from(number) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!(
            "{number} is out of range; use a TCP port from 1 to 65535"
        )),
    }
}

/// Parses `"8080, 9090,"` into ports ([`parse_list`]); empty text is the empty list,
/// so an empty environment variable means "none".
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    parse_list(text, parse_port)
}

/// A comma-separated list of TCP ports, de-duplicated in the order given: the type
/// of a port-list flag, whose empty value (an empty environment variable) is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl PortList {
    /// Parses `"15020, 22,"`; an empty string is the empty list.
    pub fn parse(text: &str) -> Result<PortList, String> {
        parse_ports(text).map(PortList)
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&joined.join(","))
    }
}

/// `text` cut to 64 characters (and `…`), so a message that quotes what a user
/// wrote stays one line however long the value was.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(text: &str) -> Result<Vec<u8>, String> {
        parse_list(text, |e| e.parse::<u8>().map_err(|_| e.to_string()))
    }

    #[test]
    fn trims_drops_empty_entries_and_keeps_first_of_repeats() {
        assert_eq!(numbers(" 3, 1,,3 ,2,").unwrap(), [3, 1, 2]);
        assert_eq!(numbers("").unwrap(), Vec::<u8>::new());
        assert_eq!(numbers(" , ,").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn ports_are_1_to_65535_and_empty_text_is_none() {
        assert_eq!(parse_ports(" 8080,9090,8080,").unwrap(), [8080, 9090]);
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
        for bad in ["0", "65536", "-1", "http", "99999999999999999999999"] {
            let err = parse_ports(&format!("80,{bad}")).unwrap_err();
            assert!(err.contains("from 1 to 65535"), "{err}");
        }
        let err = parse_port(&"9".repeat(300)).unwrap_err();
        assert!(err.len() < 160, "{err}");
    }

    #[test]
    fn shorten_respects_char_boundaries() {
        let long = "é".repeat(100);
        let short = shorten(&long);
        assert!(short.ends_with('…'));
        assert_eq!(short.chars().count(), 65);
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn the_first_refused_entry_is_the_error() {
        assert_eq!(numbers("1, x ,y").unwrap_err(), "x");
    }
}
