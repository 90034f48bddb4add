//! What steering and circuit modulation have in common: edits chosen per row of a batch, each row pushed
//! towards its own emotion or left alone. The generating stages (`emo-run`) and the `Steerer` / `Modulator`
//! front doors build their hooks through this one trait.
use emo_data::Emotion;
use emo_model::Interventions;

use crate::error::Result;

/// Per-row edits of a batch: the hooks that push row i towards `rows[i]` (`None`: left alone).
pub trait RowEdits {
    /// The hooks for a batch of `rows.len()` rows, to push into a `HookSet` together.
    fn hooks(&self, rows: &[Option<Emotion>]) -> Result<Vec<Interventions>>;
}
