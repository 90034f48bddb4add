//! One vocabulary for the components sections 6 and 7 address: a sublayer is the attention or the MLP of one
//! layer; it knows the residual site it writes into, its output hook point and the hook point of its units
//! (heads in `attn.hook_z`, neurons in `mlp.hook_post`).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::TransformerConfig;
use crate::hooks::HookPoint;
use crate::{ModelError, Result};

/// Which half of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SublayerKind {
    /// Self-attention: units are heads.
    Attn,
    /// The gated MLP: units are neurons.
    Mlp,
}

impl SublayerKind {
    /// Both, in forward order.
    pub const ALL: [SublayerKind; 2] = [SublayerKind::Attn, SublayerKind::Mlp];

    /// `attn` or `mlp`, as in the authors' CSV files.
    pub fn name(self) -> &'static str {
        match self {
            SublayerKind::Attn => "attn",
            SublayerKind::Mlp => "mlp",
        }
    }
}

impl FromStr for SublayerKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "attn" | "attention" => Ok(SublayerKind::Attn),
            "mlp" => Ok(SublayerKind::Mlp),
            _ => Err(ModelError::InvalidArgument(format!("unknown sublayer kind `{s}` (expected attn or mlp)"))),
        }
    }
}

/// The attention or the MLP of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sublayer {
    /// The block.
    pub layer: usize,
    /// Attention or MLP.
    pub kind: SublayerKind,
}

impl Sublayer {
    /// The attention of `layer`.
    pub fn attn(layer: usize) -> Self {
        Sublayer { layer, kind: SublayerKind::Attn }
    }

    /// The MLP of `layer`.
    pub fn mlp(layer: usize) -> Self {
        Sublayer { layer, kind: SublayerKind::Mlp }
    }

    /// Every sublayer of an `n_layers`-deep model in forward order (attention, then MLP, per layer).
    pub fn all(n_layers: usize) -> Vec<Sublayer> {
        (0..n_layers).flat_map(|l| SublayerKind::ALL.map(|kind| Sublayer { layer: l, kind })).collect()
    }

    /// The residual site after this sublayer's add: `hook_resid_mid` (attention) or `hook_resid_post` (MLP),
    /// the paper's attention and MLP sites.
    pub fn resid_site(self) -> HookPoint {
        match self.kind {
            SublayerKind::Attn => HookPoint::ResidMid(self.layer),
            SublayerKind::Mlp => HookPoint::ResidPost(self.layer),
        }
    }

    /// Its output before the residual add: `hook_attn_out` or `hook_mlp_out`.
    pub fn output(self) -> HookPoint {
        match self.kind {
            SublayerKind::Attn => HookPoint::AttnOut(self.layer),
            SublayerKind::Mlp => HookPoint::MlpOut(self.layer),
        }
    }

    /// Where its units live: `attn.hook_z` (heads) or `mlp.hook_post` (neurons).
    pub fn units(self) -> HookPoint {
        match self.kind {
            SublayerKind::Attn => HookPoint::AttnZ(self.layer),
            SublayerKind::Mlp => HookPoint::MlpPost(self.layer),
        }
    }

    /// How many units it has in a model of shape `cfg`: heads or neurons.
    pub fn n_units(self, cfg: &TransformerConfig) -> usize {
        match self.kind {
            SublayerKind::Attn => cfg.n_heads,
            SublayerKind::Mlp => cfg.d_mlp,
        }
    }
}

impl fmt::Display for Sublayer {
    /// `blocks.{L}.attn` or `blocks.{L}.mlp`, TransformerLens' module names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.kind.name())
    }
}

impl FromStr for Sublayer {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || ModelError::InvalidArgument(format!("unknown sublayer `{s}` (expected blocks.L.attn or blocks.L.mlp)"));
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, kind) = rest.split_once('.').ok_or_else(bad)?;
        Ok(Sublayer { layer: layer.parse().map_err(|_| bad())?, kind: kind.parse().map_err(|_| bad())? })
    }
}
