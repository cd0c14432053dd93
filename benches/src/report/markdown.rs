//! The markdown form of the report: one table of figures (rows as columns, "median
//! (min–max)"), one table of ratios, then the set-up, the paths and the notes.

use std::fmt::Write as _;

use super::{Cell, Report};
use crate::figures::Figure;

/// Renders the whole report.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Pillion side by side ({} run)\n", r.plan.mode);
    let _ = writeln!(s, "Machine: {}.\n", r.machine.summary());
    for line in &r.setup {
        let _ = writeln!(s, "- {line}");
    }
    let _ = writeln!(
        s,
        "\nEach cell: median of {} run(s) (min–max). ↑ higher is better, ↓ lower is better.\n",
        r.plan.runs
    );
    figures_table(&mut s, r);
    ratios_table(&mut s, r);
    let _ = writeln!(s, "\n## How each row reaches the service\n");
    for row in &r.rows {
        let _ = writeln!(s, "- **{}**: {}", row.name, row.path);
    }
    flood_traces(&mut s, r);
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// The flood runs' memory after the close, one line per row and run.
fn flood_traces(s: &mut String, r: &Report) {
    if r.flood_traces.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## Server-side proxy RSS after each flood closed (MiB, once a second)\n"
    );
    for t in &r.flood_traces {
        let series: Vec<String> = t.after_rss_mib.iter().map(|v| format!("{v:.1}")).collect();
        let fd_limit = t
            .proxy_fd_limit
            .map_or_else(|| "?".to_string(), |l| l.to_string());
        let _ = writeln!(
            s,
            "- {} run {} (fd limit {fd_limit}): {}",
            t.row,
            t.run,
            series.join(" ")
        );
    }
}

fn arrow(f: &Figure) -> &'static str {
    if f.higher_is_better {
        "↑"
    } else {
        "↓"
    }
}

fn figures_table(s: &mut String, r: &Report) {
    let _ = write!(s, "| figure |");
    for row in &r.rows {
        let _ = write!(s, " {} |", row.name);
    }
    let _ = write!(s, "\n|---|");
    for _ in &r.rows {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    for f in &r.figures {
        let _ = write!(s, "| {} {} |", f.label, arrow(f));
        for row in &r.rows {
            let text = row
                .cells
                .get(&f.id)
                .map_or_else(|| "—".to_string(), |c| cell(c, f.decimals));
            let _ = write!(s, " {text} |");
        }
        s.push('\n');
    }
}

fn ratios_table(s: &mut String, r: &Report) {
    if r.rows.len() < 2 {
        return;
    }
    // Columns: each proxied row ÷ direct, then Pillion ÷ each peer.
    let mut cols: Vec<(String, String)> = r.rows[1..]
        .iter()
        .map(|row| (row.name.clone(), r.rows[0].name.clone()))
        .collect();
    cols.extend(
        r.rows[2..]
            .iter()
            .map(|row| (r.rows[1].name.clone(), row.name.clone())),
    );
    let _ = write!(s, "\n## Ratios of the medians\n\n| figure |");
    for (n, d) in &cols {
        let _ = write!(s, " {n} ÷ {d} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in &cols {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    for f in &r.figures {
        let _ = write!(s, "| {} {} |", f.label, arrow(f));
        for (n, d) in &cols {
            let v = r
                .ratios
                .iter()
                .find(|x| x.figure == f.id && &x.numerator == n && &x.denominator == d);
            match v {
                Some(x) => {
                    let _ = write!(s, " {:.2}× |", x.value);
                }
                None => s.push_str(" — |"),
            }
        }
        s.push('\n');
    }
}

/// One cell: `median (min–max)`, errors flagged, n/a and failures spelled out.
fn cell(c: &Cell, decimals: usize) -> String {
    match c {
        Cell::Ok { spread, errors } => {
            let num = |v: f64| group(v, decimals);
            let mut t = if spread.runs > 1 {
                format!(
                    "{} ({}–{})",
                    num(spread.median),
                    num(spread.min),
                    num(spread.max)
                )
            } else {
                num(spread.median)
            };
            if *errors > 0 {
                let _ = write!(t, " ⚠ {errors} err");
            }
            t
        }
        Cell::NotApplicable { reason } => format!("n/a ({reason})"),
        Cell::Failed { error } => {
            let short: String = error
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            format!("failed: {short}")
        }
    }
}

/// A number with `decimals` places and thin-space-free comma grouping of the integer
/// part (e.g. `12,345.6`).
fn group(v: f64, decimals: usize) -> String {
    let text = format!("{v:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    match frac {
        Some(f) => format!("{sign}{out}.{f}"),
        None => format!("{sign}{out}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Spread;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(1234567.0, 0), "1,234,567");
        assert_eq!(group(123.456, 2), "123.46");
        assert_eq!(group(-1000.5, 1), "-1,000.5");
        assert_eq!(group(0.0123, 3), "0.012");
    }

    #[test]
    fn cells() {
        let ok = Cell::Ok {
            spread: Spread::of(&[1.0, 2.0, 3.0]).unwrap(),
            errors: 2,
        };
        assert_eq!(cell(&ok, 0), "2 (1–3) ⚠ 2 err");
        let na = Cell::NotApplicable {
            reason: "no proxy".into(),
        };
        assert_eq!(cell(&na, 0), "n/a (no proxy)");
    }
}
