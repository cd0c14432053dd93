//! The comma lists of `pillion-init`'s flags, which the injector's annotations become:
//! one syntax, split and de-duplicated one way, so an annotation the injector accepts
//! is a list `pillion-init` reads the same.

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
    fn the_first_refused_entry_is_the_error() {
        assert_eq!(numbers("1, x ,y").unwrap_err(), "x");
    }
}
