//! Emotion-expression accuracy per emotion x valence (the paper's Table 1 and Appendix C): the share of replies
//! the judge says express their target emotion.
use emo_data::{Emotion, Valence};
use serde::Serialize;

use crate::error::Result;
use crate::records::ReplyRecord;

/// Judged and matched counts of one cell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Count {
    /// Replies judged.
    pub n: usize,
    /// Replies judged to match.
    pub matched: usize,
    /// Replies the judge failed on (counted as no match, as upstream did).
    pub failed: usize,
}

impl Count {
    /// Matched share in percent (`NaN` when empty).
    pub fn percent(&self) -> f64 {
        100.0 * self.matched as f64 / self.n as f64
    }

    fn add(&mut self, other: Count) {
        self.n += other.n;
        self.matched += other.matched;
        self.failed += other.failed;
    }
}

/// Accuracy of a set of replies by emotion and valence.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Accuracy {
    /// `[emotion][valence]`, [`Emotion::ALL`] x [`Valence::ALL`] order.
    pub cells: [[Count; 3]; 6],
}

impl Accuracy {
    /// Counts the verdicts of reply records.
    pub fn of(records: &[ReplyRecord]) -> Result<Accuracy> {
        let mut a = Accuracy::default();
        for r in records {
            let c = &mut a.cells[r.emotion()?.index()][r.valence()?.index()];
            c.n += 1;
            c.matched += usize::from(r.matched());
            c.failed += usize::from(r.judge.failed);
        }
        Ok(a)
    }

    /// One emotion over all valences.
    pub fn emotion(&self, e: Emotion) -> Count {
        let mut c = Count::default();
        self.cells[e.index()].iter().for_each(|&x| c.add(x));
        c
    }

    /// One valence over all emotions.
    pub fn valence(&self, v: Valence) -> Count {
        let mut c = Count::default();
        self.cells.iter().for_each(|row| c.add(row[v.index()]));
        c
    }

    /// Everything.
    pub fn overall(&self) -> Count {
        let mut c = Count::default();
        self.cells.iter().flatten().for_each(|&x| c.add(x));
        c
    }

    /// A Markdown table: rows are valences plus `all`, columns the six emotions plus `overall`.
    pub fn markdown(&self) -> String {
        let mut s = String::from("| valence |");
        for e in Emotion::ALL {
            s.push_str(&format!(" {e} |"));
        }
        s.push_str(" overall |\n|---|");
        s.push_str(&"---:|".repeat(7));
        s.push('\n');
        for v in Valence::ALL {
            s.push_str(&format!("| {v} |"));
            for e in Emotion::ALL {
                s.push_str(&format!(" {} |", pct(self.cells[e.index()][v.index()])));
            }
            s.push_str(&format!(" {} |\n", pct(self.valence(v))));
        }
        s.push_str("| **all** |");
        for e in Emotion::ALL {
            s.push_str(&format!(" **{}** |", pct(self.emotion(e))));
        }
        s.push_str(&format!(" **{}** |\n", pct(self.overall())));
        s
    }
}

fn pct(c: Count) -> String {
    if c.n == 0 {
        "–".into()
    } else {
        format!("{:.2}", c.percent())
    }
}
