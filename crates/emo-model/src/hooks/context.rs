//! Which tokens a hook acts on ([`Positions`]) and what it knows about the chunk being computed
//! ([`HookContext`], [`Selection`]).
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use tch::Tensor;

use crate::{ModelError, Result};

/// Which tokens a hook acts on, by absolute position within each sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Every real token (never padding).
    All,
    /// Every prompt token.
    Prompt,
    /// The last prompt token (the paper's reading site: after the assistant header).
    LastPrompt,
    /// Every generated token.
    Generated,
    /// The last prompt token and every generated token: what the authors' "last position of every forward
    /// call" amounts to with a KV cache, here defined so that it is the same without one.
    LastPromptAndGenerated,
    /// Absolute positions in `start..end`.
    Range(i64, i64),
}

impl fmt::Display for Positions {
    /// The names [`Positions::from_str`] reads: `all`, `prompt`, `last-prompt`, `generated`,
    /// `last-prompt-and-generated`, `START..END`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Positions::All => write!(f, "all"),
            Positions::Prompt => write!(f, "prompt"),
            Positions::LastPrompt => write!(f, "last-prompt"),
            Positions::Generated => write!(f, "generated"),
            Positions::LastPromptAndGenerated => write!(f, "last-prompt-and-generated"),
            Positions::Range(a, b) => write!(f, "{a}..{b}"),
        }
    }
}

impl FromStr for Positions {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "all" => Positions::All,
            "prompt" => Positions::Prompt,
            "last-prompt" => Positions::LastPrompt,
            "generated" => Positions::Generated,
            "last-prompt-and-generated" => Positions::LastPromptAndGenerated,
            _ => {
                let range = s.split_once("..").and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
                match range {
                    Some((a, b)) if a >= 0 && a < b => Positions::Range(a, b),
                    _ => {
                        return Err(ModelError::InvalidArgument(format!(
                            "unknown positions `{s}` (expected all, prompt, last-prompt, generated, \
                             last-prompt-and-generated, or START..END with 0 <= START < END)"
                        )))
                    }
                }
            }
        })
    }
}

/// What a hook knows about the chunk being computed. Its tensors are on the device of the activation the hook
/// sees (a model placed across devices gives each device's layers their own copies).
pub struct HookContext<'a> {
    /// Absolute position of each token of the chunk, -1 for left padding: [batch, chunk] i64.
    pub positions: &'a Tensor,
    /// Prompt length (without padding) of each row: [batch, 1] i64.
    pub prompt_lens: &'a Tensor,
    /// 0 for the forward that includes the prompt, n for the n-th decoding step.
    pub step: usize,
    /// The logical row of each token, [batch, chunk] i64 (-1 for padding), where it is not the batch row
    /// (branched forwards).
    pub row_ids: Option<&'a Tensor>,
    // Selections are the same at every hook point of a chunk: compute each once, not once per point.
    selections: RefCell<Vec<(Positions, Rc<Selection>)>>,
}

/// The tokens of a chunk that a [`Positions`] selects.
pub struct Selection {
    /// [batch, chunk] bool.
    pub mask: Tensor,
    /// Row of each selected token, [n] i64.
    pub rows: Tensor,
    /// Column (index within the chunk) of each selected token, [n] i64.
    pub cols: Tensor,
    /// Absolute position of each selected token, [n] i64.
    pub positions: Tensor,
    /// Logical row of each selected token, [n] i64: the batch row in a plain forward, the intervention row
    /// in a branched one.
    pub row_ids: Tensor,
}

impl<'a> HookContext<'a> {
    /// A context for a chunk with these absolute positions and prompt lengths.
    pub fn new(positions: &'a Tensor, prompt_lens: &'a Tensor, step: usize) -> Self {
        HookContext { positions, prompt_lens, step, row_ids: None, selections: RefCell::new(Vec::new()) }
    }

    /// A context whose tokens belong to the logical rows `row_ids` ([batch, chunk] i64) instead of their
    /// batch rows.
    pub fn with_row_ids(positions: &'a Tensor, prompt_lens: &'a Tensor, step: usize, row_ids: &'a Tensor) -> Self {
        HookContext { row_ids: Some(row_ids), ..HookContext::new(positions, prompt_lens, step) }
    }

    /// The tokens `sel` selects in this chunk (computed once per chunk and selector).
    pub fn select(&self, sel: &Positions) -> Rc<Selection> {
        if let Some((_, s)) = self.selections.borrow().iter().find(|(p, _)| p == sel) {
            return Rc::clone(s);
        }
        let p = self.positions;
        let mask = match sel {
            Positions::All => p.ge(0),
            Positions::Prompt => p.ge(0).logical_and(&p.lt_tensor(self.prompt_lens)),
            Positions::LastPrompt => p.eq_tensor(&(self.prompt_lens - 1)),
            Positions::Generated => p.ge_tensor(self.prompt_lens),
            Positions::LastPromptAndGenerated => p.ge_tensor(&(self.prompt_lens - 1)),
            Positions::Range(a, b) => p.ge(*a).logical_and(&p.lt(*b)),
        };
        let idx = mask.nonzero(); // [n, 2]: (row, column)
        let rows = idx.select(1, 0);
        let cols = idx.select(1, 1);
        let positions = p.index(&[Some(&rows), Some(&cols)]);
        let row_ids = match self.row_ids {
            Some(ids) => ids.index(&[Some(&rows), Some(&cols)]),
            None => rows.shallow_clone(),
        };
        let s = Rc::new(Selection { mask, rows, cols, positions, row_ids });
        self.selections.borrow_mut().push((sel.clone(), Rc::clone(&s)));
        s
    }

    /// The tokens `sel` selects in this chunk, or `None` when it selects none (most decode steps for a
    /// last-prompt-token hook), so a hook can return early.
    pub fn select_some(&self, sel: &Positions) -> Option<Rc<Selection>> {
        let s = self.select(sel);
        (s.rows.size()[0] > 0).then_some(s)
    }

    /// A [batch, chunk] boolean mask of the tokens `sel` selects in this chunk.
    pub fn mask(&self, sel: &Positions) -> Tensor {
        self.select(sel).mask.shallow_clone()
    }
}
