//! The direction sets and circuits loaded at start-up, by name, and how a request's `steering` and
//! `circuit` fields (and its `emotion_trace` and `guard`, [`crate::trace`]) become one row's edits and
//! readout. Checking a request needs only names and shapes ([`Catalog`], shared with the HTTP handlers);
//! the tensors stay with the engine ([`Controls`]).

use emo_data::Emotion;
use emo_model::{Positions, RowControl, TransformerConfig};
use emo_modulate::{CircuitSet, Modulation};
use emo_steer::directions::DIRECTIONS_FILE;
use emo_steer::steer::default_layers;
use emo_steer::{Site, Steering};

use crate::api::{ApiError, CircuitRequest, GuardRequest, SteeringRequest, TraceRequest};
use crate::{Result, ServeError};

/// What a request asks for, checked against the [`Catalog`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControlSpec {
    /// Residual steering.
    pub steering: Option<SteeringSpec>,
    /// Circuit modulation.
    pub circuit: Option<CircuitSpec>,
    /// What the row's readout reads, for its trace or its guard.
    pub readout: Option<ReadoutSpec>,
    /// Conditional control.
    pub guard: Option<GuardSpec>,
}

/// What a row's readout reads (for the request's `emotion_trace` or its guard, [`crate::trace`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ReadoutSpec {
    /// Index of the direction set.
    pub set: usize,
    /// Inclusive layer range averaged.
    pub layers: (usize, usize),
    /// Whether the client asked for the trace (otherwise only a guard reads it).
    pub reported: bool,
}

/// A checked guard.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardSpec {
    /// The emotion watched.
    pub emotion: Emotion,
    /// Its score's threshold.
    pub threshold: f64,
    /// How long the guard acts.
    pub hold: emo_model::GuardHold,
    /// What it does.
    pub action: GuardAction,
}

/// What a guard does once it fires.
#[derive(Clone, Debug, PartialEq)]
pub enum GuardAction {
    /// `h += alpha * RMS(h) * v_emotion` at `hook_resid_post` of `layers`, with the readout's direction set
    /// (steering away: the watched emotion with minus alpha).
    Steer {
        /// The direction added.
        emotion: Emotion,
        /// Its strength (negative: away).
        alpha: f64,
        /// Inclusive layer range.
        layers: (usize, usize),
    },
    /// Circuit modulation.
    Circuit(CircuitSpec),
}

/// A request's control fields, as parsed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requested<'a> {
    /// `steering`.
    pub steering: Option<&'a SteeringRequest>,
    /// `circuit`.
    pub circuit: Option<&'a CircuitRequest>,
    /// `emotion_trace`.
    pub trace: Option<&'a TraceRequest>,
    /// `guard`.
    pub guard: Option<&'a GuardRequest>,
}

/// Checked steering settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SteeringSpec {
    /// Index of the direction set.
    pub set: usize,
    /// Towards which emotion.
    pub emotion: Emotion,
    /// Alpha.
    pub alpha: f64,
    /// Inclusive layer range.
    pub layers: (usize, usize),
    /// Tokens edited.
    pub positions: Positions,
    /// Site.
    pub site: Site,
}

/// Checked modulation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitSpec {
    /// Index of the circuit set.
    pub set: usize,
    /// Towards which emotion.
    pub emotion: Emotion,
    /// Scale s.
    pub scale: f64,
}

/// Names and shapes of what is loaded: enough to check a request.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Direction set names, in load order.
    pub directions: Vec<String>,
    /// Circuit set names and the emotions each has a circuit for.
    pub circuits: Vec<(String, Vec<Emotion>)>,
    /// The model's depth.
    pub n_layers: usize,
    /// The default steering layers.
    pub steering_layers: (usize, usize),
    /// The default layers of a readout (the reference direction's).
    pub trace_layers: (usize, usize),
}

/// The loaded tensors, owned by the engine.
pub struct Controls {
    pub(crate) directions: Vec<Steering>,
    pub(crate) circuits: Vec<CircuitSet>,
}

/// Loads `NAME=PATH` direction sets and `NAME=DIR` circuit sets for a model of configuration `cfg`.
pub fn load(
    cfg: &TransformerConfig,
    directions: &[(String, std::path::PathBuf)],
    circuits: &[(String, std::path::PathBuf)],
) -> Result<(Catalog, Controls)> {
    let mut names = Vec::new();
    let mut sets = Vec::new();
    for (name, path) in directions {
        check_name(name, &names)?;
        // A run folder stands for its directions.safetensors.
        let in_run = path.join(DIRECTIONS_FILE);
        let file = if path.is_dir() && in_run.is_file() { in_run } else { path.clone() };
        let d = emo_steer::import::import_directions(&file, cfg.n_layers, cfg.d_model)
            .and_then(|d| Steering::new(d, cfg))
            .map_err(|e| ServeError::Load(format!("--directions {name}={}: {e}", path.display())))?;
        names.push(name.clone());
        sets.push(d);
    }
    let mut cnames: Vec<(String, Vec<Emotion>)> = Vec::new();
    let mut csets = Vec::new();
    for (name, dir) in circuits {
        check_name(name, &cnames.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())?;
        let set = CircuitSet::load_for(dir, cfg).map_err(|e| ServeError::Load(format!("--circuits {name}={}: {e}", dir.display())))?;
        cnames.push((name.clone(), set.circuits.iter().map(|c| c.emotion).collect()));
        csets.push(set);
    }
    let catalog = Catalog {
        directions: names,
        circuits: cnames,
        n_layers: cfg.n_layers,
        steering_layers: default_layers(cfg),
        trace_layers: emo_steer::trace::reference_layers(cfg),
    };
    Ok((catalog, Controls { directions: sets, circuits: csets }))
}

fn check_name(name: &str, taken: &[String]) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ServeError::Load(format!("name `{name}`: use letters, digits, `-`, `_` or `.`")));
    }
    if taken.iter().any(|t| t == name) {
        return Err(ServeError::Load(format!("name `{name}` is given twice")));
    }
    Ok(())
}

pub(crate) fn emotion(field: &str, name: &str) -> std::result::Result<Emotion, ApiError> {
    name.parse().map_err(|_| {
        let all: Vec<&str> = Emotion::ALL.iter().map(|e| e.name()).collect();
        ApiError::invalid(field, format!("unknown emotion `{name}` in `{field}`; expected one of {}", all.join(", ")))
    })
}

/// The `steering.alpha` a request may ask for. The paper steers with 8 (in units of the state's RMS); far
/// beyond a hundred the hidden states overflow and the reply is empty, so such requests are refused.
pub const ALPHA_RANGE: std::ops::RangeInclusive<f64> = -100.0..=100.0;

/// The `circuit.scale` a request may ask for (the paper's is 1; the same overflow bounds it).
pub const SCALE_RANGE: std::ops::RangeInclusive<f64> = -100.0..=100.0;

pub(crate) fn bounded(field: &str, x: f64, range: &std::ops::RangeInclusive<f64>) -> std::result::Result<f64, ApiError> {
    if range.contains(&x) {
        Ok(x)
    } else {
        Err(ApiError::invalid(field, format!("`{field}` must be between {} and {}, got {x}", range.start(), range.end())))
    }
}

/// Picks a set by name, or the only one when no name is given.
pub(crate) fn pick(field: &str, flag: &str, wanted: Option<&str>, names: &[&str]) -> std::result::Result<usize, ApiError> {
    match wanted {
        Some(w) => names
            .iter()
            .position(|n| *n == w)
            .ok_or_else(|| ApiError::invalid(field, format!("`{field}`: no set named `{w}` was loaded (loaded: {})", list(names)))),
        None if names.len() == 1 => Ok(0),
        None if names.is_empty() => {
            Err(ApiError::invalid(field, format!("`{field}`: the server was started without any; start it with {flag} NAME=PATH")))
        }
        None => Err(ApiError::invalid(field, format!("`{field}`: several sets are loaded ({}); name one", list(names)))),
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl Catalog {
    /// Checks a request's extension fields.
    pub fn check(&self, r: Requested) -> std::result::Result<ControlSpec, ApiError> {
        let mut spec = ControlSpec::default();
        if let Some(s) = r.steering {
            let set = self.direction_set("steering.directions", s.directions.as_deref())?;
            let layers = match &s.layers {
                None => self.steering_layers,
                Some(v) => self.layer_range("steering.layers", v)?,
            };
            let positions = match &s.positions {
                None => Positions::LastPromptAndGenerated,
                Some(p) => p.parse().map_err(|e: emo_model::ModelError| ApiError::invalid("steering.positions", e.to_string()))?,
            };
            let site = match s.site.as_deref() {
                None | Some("resid_post") => Site::ResidPost,
                Some("resid_mid") => Site::ResidMid,
                Some(x) => return Err(ApiError::invalid("steering.site", format!("unknown site `{x}`; expected resid_post or resid_mid"))),
            };
            spec.steering = Some(SteeringSpec {
                set,
                emotion: emotion("steering.emotion", &s.emotion)?,
                alpha: bounded("steering.alpha", s.alpha.unwrap_or(emo_steer::paper::STEERING_ALPHA), &ALPHA_RANGE)?,
                layers,
                positions,
                site,
            });
        }
        if let Some(c) = r.circuit {
            spec.circuit = Some(self.circuit("circuit", c)?);
        }
        (spec.readout, spec.guard) = self.check_readout(r.trace, r.guard)?;
        Ok(spec)
    }

    /// The index of the direction set a request names in `field` (or the only one).
    pub(crate) fn direction_set(&self, field: &str, wanted: Option<&str>) -> std::result::Result<usize, ApiError> {
        let names: Vec<&str> = self.directions.iter().map(String::as_str).collect();
        pick(field, "--directions", wanted, &names)
    }

    /// An inclusive layer range `[first, last]` within the model.
    pub(crate) fn layer_range(&self, field: &str, v: &[i64]) -> std::result::Result<(usize, usize), ApiError> {
        let l = self.n_layers as i64;
        match v {
            [a, b] if 0 <= *a && a <= b && *b < l => Ok((*a as usize, *b as usize)),
            _ => Err(ApiError::invalid(
                field,
                format!("`{field}` must be [first, last] with 0 <= first <= last < {l} (the model has {l} layers), got {v:?}"),
            )),
        }
    }

    /// A `circuit` object found at `field` (`circuit`, `guard.action.circuit`).
    pub(crate) fn circuit(&self, field: &str, c: &CircuitRequest) -> std::result::Result<CircuitSpec, ApiError> {
        let names: Vec<&str> = self.circuits.iter().map(|(n, _)| n.as_str()).collect();
        let set = pick(&format!("{field}.circuits"), "--circuits", c.circuits.as_deref(), &names)?;
        let e = emotion(&format!("{field}.emotion"), &c.emotion)?;
        if !self.circuits[set].1.contains(&e) {
            return Err(ApiError::invalid(format!("{field}.emotion"), format!("circuit set `{}` has no circuit for {e}", names[set])));
        }
        Ok(CircuitSpec { set, emotion: e, scale: bounded(&format!("{field}.scale"), c.scale.unwrap_or(1.0), &SCALE_RANGE)? })
    }
}

impl Controls {
    /// The row edits (and readout) of a checked request, for a model on `device`.
    pub fn build(&self, spec: &ControlSpec, device: tch::Device) -> emo_steer::Result<RowControl> {
        let mut control = RowControl::none();
        if let Some(r) = &spec.readout {
            control.readout = Some(self.readout(r, device)?);
        }
        if let (Some(g), Some(r)) = (&spec.guard, &spec.readout) {
            control.guard = Some(self.guard(g, r)?);
        }
        if let Some(s) = &spec.steering {
            let mut steering = self.directions[s.set].clone();
            (steering.alpha, steering.site, steering.layers, steering.positions) = (s.alpha, s.site, s.layers, s.positions.clone());
            control.edits.extend(steering.control(s.emotion)?.edits);
        }
        if let Some(c) = &spec.circuit {
            control.edits.extend(Modulation::new(&self.circuits[c.set]).control(c.emotion, c.scale)?.edits);
        }
        Ok(control)
    }
}
