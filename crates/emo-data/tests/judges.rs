//! Judges on real inputs: the NRC lexicon judge's decision rule, the paper's judge prompt on the default
//! chat model, and the evaluation against the paper's labels.
mod common;
use std::path::Path;

use emo_data::judge::{evaluate, load_labels, Judge};
use emo_data::{ChatJudge, DataError, Emotion, LexiconJudge};
use emo_model::{LoadOptions, Model};

fn lexicon() -> LexiconJudge {
    let path = LexiconJudge::default_path();
    LexiconJudge::load(&path).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh` to fetch the NRC lexicon)"))
}

#[test]
fn lexicon_rule_negation_and_intensity() {
    let mut j = lexicon();
    let angry = "This is an outrage, the manager insulted me and I will fight this.";
    let w = j.weights(angry);
    assert!(w[Emotion::Anger.index()] > 0.0, "{w:?}");
    let v = j.judge(&[(Emotion::Anger, angry), (Emotion::Happiness, angry)]).unwrap();
    assert_eq!(v[0].matched, Some(true));
    assert_eq!(v[1].matched, Some(false));
    // Negation removes the next words' emotion; an intensifier doubles it.
    let plain = j.weights("the party was fun")[Emotion::Happiness.index()];
    assert!(plain > 0.0);
    assert_eq!(j.weights("the party was not fun")[Emotion::Happiness.index()], 0.0);
    assert_eq!(j.weights("the party was so fun")[Emotion::Happiness.index()], 2.0 * plain);
    // No emotion words: no match, score 0.
    let v = j.judge(&[(Emotion::Fear, "The meeting is at noon.")]).unwrap();
    assert_eq!((v[0].matched, v[0].score), (Some(false), 0.0));
}

#[test]
fn a_malformed_lexicon_or_label_file_is_an_error_naming_it() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bad = dir.join("bad_lexicon.json");
    std::fs::write(&bad, "[1, 2]").unwrap();
    let e = LexiconJudge::load(&bad).err().unwrap().to_string();
    assert!(e.contains("bad_lexicon.json"), "{e}");
    let labels = dir.join("bad_labels.jsonl");
    std::fs::write(&labels, "{\"emotion\": \"anger\", \"gen_text\": \"x\", \"judge\": {\"match\": 1}}\n{\"emotion\": \"joy\", \"gen_text\": \"x\", \"judge\": {\"match\": 1}}\n").unwrap();
    match load_labels(&labels) {
        Err(e @ DataError::Record { .. }) => {
            let s = e.to_string();
            assert!(s.contains("bad_labels.jsonl:2: emotion") && s.contains("`joy`"), "{s}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn lexicon_judge_against_the_papers_labels() {
    let Some(upstream) = common::upstream("steering_labeled.jsonl") else { return };
    let path = upstream.join("steering_labeled.jsonl");
    let labels = load_labels(&path).unwrap();
    assert_eq!(labels.len(), 2880);
    assert_eq!(labels.iter().filter(|l| !l.matched).count(), 253);
    let report = evaluate(&mut lexicon(), &labels, 64).unwrap();
    assert_eq!(report.labeled.n, 2880);
    assert_eq!(report.cross.n, 2 * (2880 - 253));
    // Telling a reply's own emotion from another must beat chance clearly.
    assert!(report.cross.kappa > 0.2, "{report:?}");
    eprintln!("{}", serde_json::to_string(&report).unwrap());
}

#[test]
fn chat_judge_reads_the_forced_decision_batched_like_alone() {
    let model =
        Model::load("smollm2-135m", LoadOptions::new(tch::Device::Cpu, tch::Kind::Float)).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh`)"));
    let mut j = ChatJudge::new(&model, "chat").unwrap();
    let ids = j.prompt_ids(Emotion::Anger, "How dare they cancel it again!").unwrap();
    let text = model.tokenizer.decode(&ids, false).unwrap();
    assert!(text.ends_with("{\"match\": "), "{text}");
    assert!(text.contains("Target emotion: anger\nText:\nHow dare they cancel it again!\n"), "{text}");
    let items = [
        (Emotion::Anger, "How dare they cancel it again! This is outrageous."),
        (Emotion::Happiness, "What a lovely day, everything went perfectly."),
        (Emotion::Fear, "I heard footsteps behind me in the dark."),
    ];
    let batched = j.judge(&items).unwrap();
    for (k, item) in items.iter().enumerate() {
        let alone = j.judge(std::slice::from_ref(item)).unwrap();
        assert!((alone[0].score - batched[k].score).abs() < 1e-4, "{k}: {alone:?} vs {:?}", batched[k]);
        assert!(batched[k].score > 0.0 && batched[k].score < 1.0);
    }
}

#[test]
fn embedding_judge_learns_its_corpus_and_beats_the_lexicon_on_the_papers_labels() {
    use emo_data::embedding_judge::{builtin_corpus, CLASSES};
    use emo_data::EmbeddingJudge;
    use emo_data::SentenceEncoder;

    let corpus = builtin_corpus().unwrap();
    assert_eq!(corpus.len(), 1050);
    for (c, name) in CLASSES.iter().enumerate() {
        assert_eq!(corpus.iter().filter(|e| e.class == c).count(), 150, "{name}");
    }
    // Held-out check of the training itself: train on 4/5, classify the other fifth.
    let encoder =
        SentenceEncoder::load(&SentenceEncoder::default_dir(), tch::Device::Cpu).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh`)"));
    let (train, held): (Vec<_>, Vec<_>) = corpus.iter().cloned().enumerate().partition(|(i, _)| i % 5 != 0);
    let train: Vec<_> = train.into_iter().map(|(_, e)| e).collect();
    let held: Vec<_> = held.into_iter().map(|(_, e)| e).collect();
    let judge = EmbeddingJudge::train(encoder, &train).unwrap();
    let texts: Vec<&str> = held.iter().map(|e| e.text.as_str()).collect();
    let pred = Vec::<i64>::try_from(judge.probabilities(&texts).unwrap().argmax(-1, false)).unwrap();
    let correct = held.iter().zip(&pred).filter(|(e, &p)| e.class as i64 == p).count();
    let accuracy = correct as f64 / held.len() as f64;
    assert!(accuracy > 0.6, "held-out accuracy {accuracy} (chance is 1/7)");

    let Some(upstream) = common::upstream("steering_labeled.jsonl") else { return };
    let path = upstream.join("steering_labeled.jsonl");
    // Every fourth label keeps the test short; both judges see the same items.
    let labels: Vec<_> = load_labels(&path).unwrap().into_iter().step_by(4).collect();
    let embedding = evaluate(&mut EmbeddingJudge::load_default().unwrap(), &labels, 64).unwrap();
    let lexicon = evaluate(&mut lexicon(), &labels, 64).unwrap();
    eprintln!("embedding {:?}\nlexicon {:?}", embedding, lexicon);
    assert!(embedding.cross.kappa > lexicon.cross.kappa, "{embedding:?} vs {lexicon:?}");
    assert!(embedding.labeled.kappa > lexicon.labeled.kappa, "{embedding:?} vs {lexicon:?}");
}

#[test]
fn the_embedding_judges_training_is_kept_and_read_back() {
    use emo_data::embedding_judge::builtin_corpus;
    use emo_data::{EmbeddingJudge, SentenceEncoder};
    let dir = SentenceEncoder::default_dir();
    let encoder = || SentenceEncoder::load(&dir, tch::Device::Cpu).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh`)"));
    // A few examples of each class keep the training short.
    let examples: Vec<_> = builtin_corpus().unwrap().into_iter().step_by(15).collect();
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("judge-cache-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let cache = tmp.join("judge.safetensors");
    let texts = ["I am furious about this.", "What a lovely surprise!", "The meeting is at noon."];
    let probs = |j: &EmbeddingJudge| j.probabilities(&texts).unwrap();
    let trained = EmbeddingJudge::train_cached(encoder(), &examples, &cache).unwrap();
    assert!(cache.is_file(), "the training is kept");
    assert!(probs(&EmbeddingJudge::train_cached(encoder(), &examples, &cache).unwrap()).equal(&probs(&trained)), "and read back exactly");
    assert!(probs(&EmbeddingJudge::train(encoder(), &examples).unwrap()).equal(&probs(&trained)), "training is deterministic");
    // What is in the file is what a load uses: zero weights give every class the same probability.
    let zeros = tch::nn::VarStore::new(tch::Device::Cpu);
    let _ = tch::nn::linear(zeros.root(), 384, 7, Default::default());
    tch::no_grad(|| zeros.variables().values_mut().for_each(|v| drop(v.zero_())));
    zeros.save(&cache).unwrap();
    let flat = probs(&EmbeddingJudge::train_cached(encoder(), &examples, &cache).unwrap());
    assert!((flat - 1.0 / 7.0).abs().max().double_value(&[]) < 1e-6);
    // A corrupt file is trained over and replaced.
    std::fs::write(&cache, b"not a safetensors file").unwrap();
    assert!(probs(&EmbeddingJudge::train_cached(encoder(), &examples, &cache).unwrap()).equal(&probs(&trained)));
    assert!(probs(&EmbeddingJudge::train_cached(encoder(), &examples, &cache).unwrap()).equal(&probs(&trained)), "the replacement reads back");
    let _ = std::fs::remove_dir_all(&tmp);
}
