//! Several judges as one: a text matches when any member says it matches (`embedding+lexicon`).
//!
//! Why "any": the members are independent views of one question (a sentence embedding's class, the words'
//! emotions), and the measured default judge errs by rejecting (precision 0.99, recall 0.78 on the paper's
//! labels, docs/judges.md), so a second, differently built view can only recover misses. The rule was fixed
//! before measuring; nothing is fitted to the paper's labels.
use crate::judge::{Judge, Verdict};
use crate::{DataError, Emotion};

/// Judges combined by "any member matches".
pub struct AnyOfJudge {
    members: Vec<Box<dyn Judge>>,
}

impl AnyOfJudge {
    /// Combines `members` (at least one).
    pub fn new(members: Vec<Box<dyn Judge>>) -> Result<Self, DataError> {
        if members.is_empty() {
            return Err(DataError::Invalid("an ensemble judge needs at least one member".into()));
        }
        Ok(AnyOfJudge { members })
    }
}

/// One verdict from the members' verdicts on the same item: a match if any member matched (score: the best
/// matching member's); else no match if every member decided (score: the highest); else the first failure,
/// since a failed member might have matched.
pub fn any_of(verdicts: &[Verdict]) -> Verdict {
    let best = |matched: bool| verdicts.iter().filter(|v| v.matched == Some(matched)).map(|v| v.score).fold(f64::NEG_INFINITY, f64::max);
    if verdicts.iter().any(|v| v.matched == Some(true)) {
        return Verdict::decided(true, best(true));
    }
    match verdicts.iter().find(|v| v.matched.is_none()) {
        Some(failed) => failed.clone(),
        None => Verdict::decided(false, best(false)),
    }
}

impl Judge for AnyOfJudge {
    fn name(&self) -> String {
        self.members.iter().map(|m| m.name()).collect::<Vec<_>>().join("+")
    }

    fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, DataError> {
        let mut per_member = Vec::with_capacity(self.members.len());
        for m in &mut self.members {
            let v = m.judge(items)?;
            if v.len() != items.len() {
                return Err(DataError::Invalid(format!("judge `{}` gave {} verdicts for {} items", m.name(), v.len(), items.len())));
            }
            per_member.push(v);
        }
        Ok((0..items.len()).map(|i| any_of(&per_member.iter().map(|v| v[i].clone()).collect::<Vec<_>>())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::Failure;

    /// A judge that answers from a fixed script, to test the combination alone.
    struct Scripted(&'static str, Vec<Verdict>);
    impl Judge for Scripted {
        fn name(&self) -> String {
            self.0.into()
        }
        fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, DataError> {
            Ok(self.1.iter().take(items.len()).cloned().collect())
        }
    }

    #[test]
    fn any_member_matching_is_a_match_and_failures_are_not_rejections() {
        let (yes, no) = (Verdict::decided(true, 0.7), Verdict::decided(false, 0.2));
        let fail = Verdict::failed(Failure::Api("down".into()));
        let a = Scripted("a", vec![yes.clone(), no.clone(), no.clone(), fail.clone()]);
        let b = Scripted("b", vec![no.clone(), Verdict::decided(false, 0.4), fail.clone(), Verdict::decided(true, 0.9)]);
        let mut j = AnyOfJudge::new(vec![Box::new(a), Box::new(b)]).unwrap();
        assert_eq!(j.name(), "a+b");
        let items = [(Emotion::Anger, "x"); 4];
        let v = j.judge(&items).unwrap();
        assert_eq!(v[0], Verdict::decided(true, 0.7));
        assert_eq!(v[1], Verdict::decided(false, 0.4));
        assert_eq!(v[2], fail);
        assert_eq!(v[3], Verdict::decided(true, 0.9));
    }

    #[test]
    fn a_member_with_too_few_verdicts_is_an_error_and_empty_is_refused() {
        let short = Scripted("short", vec![Verdict::decided(true, 1.0)]);
        let mut j = AnyOfJudge::new(vec![Box::new(short)]).unwrap();
        let err = j.judge(&[(Emotion::Fear, "x"), (Emotion::Fear, "y")]).unwrap_err().to_string();
        assert!(err.contains("short") && err.contains("1 verdicts for 2"), "{err}");
        assert!(AnyOfJudge::new(Vec::new()).is_err());
    }
}
