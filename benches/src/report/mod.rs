//! The report: every figure of every row (median, min, max, errors), the ratios against
//! direct and between Pillion and each peer, the machine and the set-up, as JSON and as
//! a markdown table.

mod markdown;
mod ratios;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

pub use markdown::render as markdown;
pub use ratios::{compute as ratios, Ratio};

use crate::figures::Figure;
use crate::machine::Machine;
use crate::plan::Plan;
use crate::stats::Spread;

/// One figure of one row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Cell {
    /// Measured.
    Ok {
        /// Median, min, max over the runs.
        #[serde(flatten)]
        spread: Spread,
        /// Failed requests or connections over all runs (0 when clean).
        errors: u64,
    },
    /// The row cannot have this figure (e.g. no proxy, so no proxy memory).
    NotApplicable {
        /// Why.
        reason: String,
    },
    /// The measurement failed.
    Failed {
        /// The first error.
        error: String,
    },
}

impl Cell {
    /// The median, when measured.
    pub fn median(&self) -> Option<f64> {
        match self {
            Cell::Ok { spread, .. } => Some(spread.median),
            _ => None,
        }
    }
}

/// One row: a contender and its cells by figure id.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The contender's name, e.g. "Pillion (mTLS)".
    pub name: String,
    /// How its client reaches the service.
    pub path: String,
    /// Cells by figure id.
    pub cells: BTreeMap<String, Cell>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seconds since the epoch when the run finished.
    pub finished_unix: u64,
    /// The machine.
    pub machine: Machine,
    /// How processes were pinned, and worker counts.
    pub setup: Vec<String>,
    /// The plan (durations, counts).
    pub plan: Plan,
    /// The figures, in table order.
    pub figures: Vec<Figure>,
    /// The rows, direct first.
    pub rows: Vec<Row>,
    /// Ratios of medians.
    pub ratios: Vec<Ratio>,
    /// What a reader must know to read the numbers honestly.
    pub notes: Vec<String>,
    /// The flood figure's samples over time, per row and run (`--flood` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flood_traces: Vec<crate::flood::FloodTrace>,
}

impl Report {
    /// Whether any cell failed.
    pub fn has_failures(&self) -> bool {
        self.rows
            .iter()
            .flat_map(|r| r.cells.values())
            .any(|c| matches!(c, Cell::Failed { .. }))
    }

    /// Writes `bench.md` and `bench.json` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = dir.join("bench.md");
        let json = dir.join("bench.json");
        std::fs::write(&md, markdown(self)).with_context(|| format!("writing {}", md.display()))?;
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&json, text + "\n")
            .with_context(|| format!("writing {}", json.display()))?;
        Ok((md, json))
    }
}
