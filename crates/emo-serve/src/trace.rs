//! A request's `emotion_trace` and `guard` fields: checked against the [`Catalog`] into a [`ReadoutSpec`]
//! (what the row's readout reads: one direction set at a layer range) and a [`GuardSpec`], then built by the
//! engine's [`Controls`] into the row's [`Readout`] and [`Guard`]. A guard reads with the trace's settings
//! when the request asks for both, so that the threshold applies to the very scores the client sees.
use emo_model::{Guard, GuardHold, Positions, Readout};
use emo_modulate::Modulation;
use emo_steer::EmotionTracer;

use crate::api::{ApiError, GuardRequest, TraceLayers, TraceRequest};
use crate::controls::{bounded, emotion, Catalog, Controls, GuardAction, GuardSpec, ReadoutSpec, ALPHA_RANGE};

impl Catalog {
    /// Checks `emotion_trace` and `guard`.
    pub(crate) fn check_readout(
        &self,
        trace: Option<&TraceRequest>,
        guard: Option<&GuardRequest>,
    ) -> Result<(Option<ReadoutSpec>, Option<GuardSpec>), ApiError> {
        let readout = match trace {
            Some(t) => Some(ReadoutSpec {
                set: self.direction_set("emotion_trace.directions", t.directions.as_deref())?,
                layers: self.readout_layers("emotion_trace.layers", t.layers.as_ref())?,
                reported: true,
            }),
            None => None,
        };
        let Some(g) = guard else { return Ok((readout, None)) };
        let own = ReadoutSpec {
            set: self.direction_set("guard.directions", g.directions.as_deref().or(trace.and_then(|t| t.directions.as_deref())))?,
            layers: self.readout_layers("guard.layers", g.layers.as_ref().or(trace.and_then(|t| t.layers.as_ref())))?,
            reported: false,
        };
        let readout = match readout {
            Some(r) if (r.set, r.layers) != (own.set, own.layers) => {
                let field = if r.set != own.set { "guard.directions" } else { "guard.layers" };
                return Err(ApiError::invalid(field, format!("`{field}` must read what `emotion_trace` reads (leave it out to share the trace's)")));
            }
            Some(r) => r,
            None => own,
        };
        if !g.threshold.is_finite() {
            return Err(ApiError::invalid("guard.threshold", format!("`guard.threshold` must be a finite number, got {}", g.threshold)));
        }
        let watched = emotion("guard.emotion", &g.emotion)?;
        let hold = match g.hold.as_deref() {
            None | Some("rest") => GuardHold::Rest,
            Some("above") => GuardHold::WhileAbove,
            Some(x) => return Err(ApiError::invalid("guard.hold", format!("unknown `guard.hold` `{x}`; expected rest or above"))),
        };
        let action = match (&g.action.steer, &g.action.circuit) {
            (Some(s), None) => {
                let alpha = bounded("guard.action.steer.alpha", s.alpha.unwrap_or(emo_steer::paper::STEERING_ALPHA), &ALPHA_RANGE)?;
                let (emotion, alpha) = match s.emotion.as_str() {
                    "away" => (watched, -alpha),
                    e => (emotion("guard.action.steer.emotion", e)?, alpha),
                };
                let layers = match &s.layers {
                    None => self.steering_layers,
                    Some(v) => self.layer_range("guard.action.steer.layers", v)?,
                };
                GuardAction::Steer { emotion, alpha, layers }
            }
            (None, Some(c)) => GuardAction::Circuit(self.circuit("guard.action.circuit", c)?),
            _ => return Err(ApiError::invalid("guard.action", "`guard.action` must hold exactly one of `steer` and `circuit`")),
        };
        Ok((Some(readout), Some(GuardSpec { emotion: watched, threshold: g.threshold, hold, action })))
    }

    fn readout_layers(&self, field: &str, layers: Option<&TraceLayers>) -> Result<(usize, usize), ApiError> {
        match layers {
            None => Ok(self.trace_layers),
            Some(TraceLayers::Named(n)) if n == "reference" => Ok(self.trace_layers),
            Some(TraceLayers::Named(n)) => Err(ApiError::invalid(field, format!("unknown `{field}` `{n}`; expected \"reference\" or [first, last]"))),
            Some(TraceLayers::Range(v)) => self.layer_range(field, v),
        }
    }
}

impl Controls {
    /// A row's readout: the six emotions' scores, in [`Emotion::ALL`] order.
    pub(crate) fn readout(&self, spec: &ReadoutSpec, device: tch::Device) -> emo_steer::Result<Readout> {
        Ok(EmotionTracer::new(self.directions[spec.set].directions(), spec.layers, device)?.readout().clone())
    }

    /// A row's guard, watching its readout's score of the guarded emotion; its edits act from the next
    /// generated token on.
    pub(crate) fn guard(&self, spec: &GuardSpec, readout: &ReadoutSpec) -> emo_steer::Result<Guard> {
        let action = match &spec.action {
            GuardAction::Steer { emotion, alpha, layers } => {
                let mut steering = self.directions[readout.set].clone();
                (steering.alpha, steering.layers, steering.positions) = (*alpha, *layers, Positions::Generated);
                steering.control(*emotion)?.edits
            }
            GuardAction::Circuit(c) => Modulation::new(&self.circuits[c.set]).control(c.emotion, c.scale)?.edits,
        };
        Ok(Guard { score: spec.emotion.index(), threshold: spec.threshold, action, hold: spec.hold })
    }
}
