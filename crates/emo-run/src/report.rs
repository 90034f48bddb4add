//! A Markdown report builder: headings, paragraphs, tables and figures, written atomically into the run
//! folder. Every section's `report.md` is built with it.
//!
//! ```
//! use emo_run::report::Report;
//! let mut r = Report::new("Section 6");
//! r.paragraph("Neuron ablation on the test split.");
//! r.table(&["k", "Delta s"], &[vec!["0".into(), "0.00".into()], vec!["8".into(), "-3.10".into()]]);
//! let md = r.markdown();
//! assert!(md.starts_with("# Section 6\n"));
//! assert!(md.contains("| k | Delta s |\n|---|---:|\n| 0 | 0.00 |"));
//! ```
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::store::write_atomic;

/// A report being built: the structured pieces below, and any Markdown through [`std::fmt::Write`].
#[derive(Clone, Debug, Default)]
pub struct Report {
    md: String,
}

impl Report {
    /// A report titled `title` (a level-1 heading).
    pub fn new(title: &str) -> Self {
        Report { md: format!("# {title}\n\n") }
    }

    /// A heading of `level` (2 = section).
    pub fn heading(&mut self, level: usize, text: &str) -> &mut Self {
        let _ = writeln!(self.md, "{} {text}\n", "#".repeat(level.clamp(1, 6)));
        self
    }

    /// A paragraph (Markdown text as given).
    pub fn paragraph(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.md, "{}\n", text.trim_end());
        self
    }

    /// A table: the first column left-aligned, the others right-aligned (numbers).
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> &mut Self {
        let _ = writeln!(self.md, "| {} |", header.join(" | "));
        let align: Vec<&str> = (0..header.len()).map(|i| if i == 0 { "---" } else { "---:" }).collect();
        let _ = writeln!(self.md, "|{}|", align.join("|"));
        for row in rows {
            let _ = writeln!(self.md, "| {} |", row.join(" | "));
        }
        self.md.push('\n');
        self
    }

    /// A figure: its PNG at `png`, shown relative to the report's folder `base`.
    pub fn figure(&mut self, alt: &str, png: &Path, base: &Path) -> &mut Self {
        let rel = png.strip_prefix(base).unwrap_or(png);
        let _ = writeln!(self.md, "![{alt}]({})\n", rel.display());
        self
    }

    /// The Markdown so far.
    ///
    /// Free-form Markdown is appended with `write!`/`writeln!` ([`Report`] implements [`std::fmt::Write`]).
    pub fn markdown(&self) -> &str {
        &self.md
    }

    /// Writes the report to `path` atomically and returns the path.
    pub fn write(&self, path: &Path) -> Result<PathBuf> {
        write_atomic(path, self.md.as_bytes())?;
        Ok(path.to_path_buf())
    }
}

impl std::fmt::Write for Report {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.md.push_str(s);
        Ok(())
    }
}
