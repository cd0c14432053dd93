//! Ratios of medians: each proxied row against direct, and Pillion against each peer.
//! A ratio is plain division (row ÷ reference); whether above 1 is good depends on the
//! figure, which the report states next to it.

use serde::Serialize;

use super::Row;
use crate::figures::Figure;

/// `numerator ÷ denominator` for one figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// Figure id.
    pub figure: String,
    /// Row name on top.
    pub numerator: String,
    /// Reference row name.
    pub denominator: String,
    /// The ratio of the medians.
    pub value: f64,
}

/// Every proxied row ÷ direct (row 0), then Pillion (row 1) ÷ each peer (rows 2..).
pub fn compute(figures: &[Figure], rows: &[Row]) -> Vec<Ratio> {
    let mut pairs: Vec<(usize, usize)> = (1..rows.len()).map(|i| (i, 0)).collect();
    pairs.extend((2..rows.len()).map(|i| (1, i)));
    let mut out = Vec::new();
    for (num, den) in pairs {
        for f in figures {
            let a = rows[num].cells.get(&f.id).and_then(|c| c.median());
            let b = rows[den].cells.get(&f.id).and_then(|c| c.median());
            if let (Some(a), Some(b)) = (a, b) {
                if b != 0.0 {
                    out.push(Ratio {
                        figure: f.id.clone(),
                        numerator: rows[num].name.clone(),
                        denominator: rows[den].name.clone(),
                        value: a / b,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Cell;
    use crate::stats::Spread;

    fn row(name: &str, v: Option<f64>) -> Row {
        let mut cells = std::collections::BTreeMap::new();
        cells.insert(
            "x".to_string(),
            match v {
                Some(v) => Cell::Ok {
                    spread: Spread::of(&[v]).unwrap(),
                    errors: 0,
                },
                None => Cell::NotApplicable { reason: "-".into() },
            },
        );
        Row {
            name: name.into(),
            path: String::new(),
            cells,
        }
    }

    #[test]
    fn against_direct_and_peers() {
        let figs = vec![Figure {
            id: "x".into(),
            label: "x".into(),
            unit: "req/s",
            higher_is_better: true,
            decimals: 0,
        }];
        let rows = [
            row("direct", Some(100.0)),
            row("P", Some(50.0)),
            row("n", Some(25.0)),
            row("h", None),
        ];
        let r = compute(&figs, &rows);
        let find = |n: &str, d: &str| r.iter().find(|x| x.numerator == n && x.denominator == d);
        assert_eq!(find("P", "direct").unwrap().value, 0.5);
        assert_eq!(find("n", "direct").unwrap().value, 0.25);
        assert_eq!(find("P", "n").unwrap().value, 2.0);
        assert!(find("P", "h").is_none());
        assert!(find("h", "direct").is_none());
    }
}
