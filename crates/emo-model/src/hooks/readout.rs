//! Linear readouts of the residual stream at the token being decoded: each row's activation at a few hook
//! points, projected on a handful of directions and averaged over the points (the paper's emotion scores,
//! read live while a reply is generated).
//!
//! A [`Readout`] is the probe (one `[k, width]` matrix per hook point); [`Readouts`] is the hook that applies
//! each row's probe at the last token of every forward, which is the token whose logits choose the next one.
//! Read after the row's edits (register it after them), it scores the state the model goes on with.
//!
//! ```no_run
//! use emo_model::hooks::{Readout, Readouts};
//! use emo_model::{GenerationConfig, HookPoint, HookSet, LoadOptions, Model};
//! use tch::{Kind, Tensor};
//! let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! let d = model.transformer.config().d_model as i64;
//! // Two probe directions read at layers 20 and 21, averaged.
//! let probe = Tensor::randn([2, d], (Kind::Float, tch::Device::Cpu));
//! let readout = Readout::new(vec![(HookPoint::ResidPost(20), probe.shallow_clone()), (HookPoint::ResidPost(21), probe)])?;
//! let mut readouts = Readouts::new(vec![Some(readout)]);
//! let prompt = model.tokenizer.encode("The storm broke the window", true)?;
//! let cfg = GenerationConfig { eos_token_ids: model.eos_token_ids.clone(), ..GenerationConfig::greedy(8) };
//! let out = emo_model::generate::generate(&model.transformer, &[prompt], &cfg, model.pad_token_id(), &mut HookSet::new().with(&mut readouts))?;
//! // Forward i chose token i: its scores are the first row's entry of forward i.
//! for (token, forward) in out[0].tokens.iter().zip(readouts.take()?) {
//!     println!("{token}: {:?}", forward[0]);
//! }
//! # Ok::<(), emo_model::ModelError>(())
//! ```
use std::fmt;

use tch::{Kind, Tensor};

use super::{Hook, HookContext, HookPoint};
use crate::{ModelError, Result};

/// A linear probe: at each of its hook points, a `[k, width]` matrix whose rows are directions; the scores
/// of a token are the mean over the points of `matrix · activation`.
pub struct Readout {
    points: Vec<(HookPoint, Tensor)>,
}

impl Clone for Readout {
    fn clone(&self) -> Self {
        Readout { points: self.points.iter().map(|(p, m)| (*p, m.shallow_clone())).collect() }
    }
}

impl fmt::Debug for Readout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let points: Vec<String> = self.points.iter().map(|(p, _)| p.to_string()).collect();
        f.debug_struct("Readout").field("points", &points).field("scores", &self.width()).finish()
    }
}

impl Readout {
    /// A probe reading `points`, each with its `[k, width]` matrix (converted to f32; put it on the model's
    /// device). Every matrix must have the same k, and a point may appear once.
    pub fn new(points: Vec<(HookPoint, Tensor)>) -> Result<Self> {
        let Some((_, first)) = points.first() else {
            return Err(ModelError::InvalidArgument("a readout needs at least one hook point".into()));
        };
        let k = first.size().first().copied().unwrap_or(0);
        for (i, (p, m)) in points.iter().enumerate() {
            if m.dim() != 2 || m.size()[0] != k || k == 0 {
                return Err(ModelError::InvalidArgument(format!(
                    "readout at {p}: expected a [{k}, width] matrix like the first point's, got {:?}",
                    m.size()
                )));
            }
            if points[..i].iter().any(|(q, _)| q == p) {
                return Err(ModelError::InvalidArgument(format!("readout: hook point {p} is given twice")));
            }
        }
        Ok(Readout { points: points.into_iter().map(|(p, m)| (p, m.to_kind(Kind::Float))).collect() })
    }

    /// Scores per token (k).
    pub fn width(&self) -> usize {
        self.points[0].1.size()[0] as usize
    }

    /// The hook points read.
    pub fn points(&self) -> impl Iterator<Item = HookPoint> + '_ {
        self.points.iter().map(|(p, _)| *p)
    }

    fn matrix(&self, point: HookPoint) -> Option<&Tensor> {
        self.points.iter().find(|(p, _)| *p == point).map(|(_, m)| m)
    }
}

/// Scores of one forward: per row, its readout's k scores (`None` for a row without a readout).
pub type ForwardScores = Vec<Option<Vec<f32>>>;

/// The hook that applies row i's [`Readout`] (if any) at the last token of row i in every forward it sees,
/// summing over the readout's points. Rows are logical rows ([`crate::hooks::Selection::row_ids`]), so a row
/// keeps its readout when finished rows leave a batch ([`crate::generate::generate`]).
pub struct Readouts {
    rows: Vec<Option<Readout>>,
    // The forward being read (its HookContext::step) and its running sums per row.
    step: Option<usize>,
    sums: Vec<Option<Tensor>>,
    done: Vec<ForwardScores>,
}

impl Readouts {
    /// Row i reads with `rows[i]`.
    pub fn new(rows: Vec<Option<Readout>>) -> Self {
        let n = rows.len();
        Readouts { rows, step: None, sums: (0..n).map(|_| None).collect(), done: Vec::new() }
    }

    /// Whether no row has a readout (the hook then wants no point and costs nothing).
    pub fn is_empty(&self) -> bool {
        self.rows.iter().all(Option::is_none)
    }

    /// The scores of every forward seen since the last call, oldest first: forward i is the prompt's for
    /// i = 0, then the i-th decoding step's, so that entry i scores the state that chose generated token i.
    pub fn take(&mut self) -> Result<Vec<ForwardScores>> {
        self.flush()?;
        Ok(std::mem::take(&mut self.done))
    }

    /// The scores of the last forward seen (each row `None` when none was), dropping older ones.
    pub fn take_last(&mut self) -> Result<ForwardScores> {
        let n = self.rows.len();
        Ok(self.take()?.pop().unwrap_or_else(|| vec![None; n]))
    }

    fn flush(&mut self) -> Result<()> {
        if self.step.take().is_none() {
            return Ok(());
        }
        let mut scores = Vec::with_capacity(self.rows.len());
        for (sum, readout) in self.sums.iter_mut().zip(&self.rows) {
            scores.push(match (sum.take(), readout) {
                (Some(s), Some(r)) => Some(Vec::<f32>::try_from((s / r.points.len() as f64).to_device(tch::Device::Cpu))?),
                _ => None,
            });
        }
        self.done.push(scores);
        Ok(())
    }
}

impl Hook for Readouts {
    fn wants(&self, point: HookPoint) -> bool {
        self.rows.iter().flatten().any(|r| r.matrix(point).is_some())
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        if self.step.is_some_and(|s| s != ctx.step) {
            self.flush()?;
        }
        self.step = Some(ctx.step);
        // The last column is every row's newest token (batches are left-padded).
        let last = act.select(1, act.size()[1] - 1).to_kind(Kind::Float);
        let ids: Vec<i64> = match ctx.row_ids {
            Some(ids) => Vec::try_from(ids.select(1, ids.size()[1] - 1).to_device(tch::Device::Cpu))?,
            None => (0..last.size()[0]).collect(),
        };
        for (i, id) in ids.into_iter().enumerate() {
            let Some(Some(readout)) = usize::try_from(id).ok().and_then(|id| self.rows.get(id)) else { continue };
            let Some(m) = readout.matrix(point) else { continue };
            let s = m.mv(&last.get(i as i64).to_device(m.device()));
            let slot = &mut self.sums[id as usize];
            *slot = Some(match slot.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
        Ok(None)
    }
}
