//! [`Input`]: what the research entry points ([`crate::Model::run_with_cache`],
//! [`crate::Model::run_with_hooks`]) accept: text, several texts, chat conversations or token ids.
use crate::chat::ChatMessage;

/// What to run the model on. Build one with `.into()` from a `&str`, a `String`, a list of texts, a
/// conversation (`Vec<ChatMessage>`), several conversations, token ids (`Vec<u32>`) or several rows of them.
/// Several rows are left-padded inside; each row's positions count from its first real token.
#[derive(Clone, Debug)]
pub enum Input {
    /// Plain texts, tokenized as Hugging Face's `tokenizer(text)` does (the special tokens its post-processor
    /// adds, no chat template).
    Texts(Vec<String>),
    /// Conversations, rendered with the model's chat template up to the assistant header
    /// ([`crate::Model::encode_chat`]).
    Conversations(Vec<Vec<ChatMessage>>),
    /// Token ids, run as they are.
    Ids(Vec<Vec<u32>>),
}

impl From<&str> for Input {
    fn from(text: &str) -> Self {
        Input::Texts(vec![text.to_string()])
    }
}

impl From<String> for Input {
    fn from(text: String) -> Self {
        Input::Texts(vec![text])
    }
}

impl From<&String> for Input {
    fn from(text: &String) -> Self {
        Input::Texts(vec![text.clone()])
    }
}

impl From<&[&str]> for Input {
    fn from(texts: &[&str]) -> Self {
        Input::Texts(texts.iter().map(|t| t.to_string()).collect())
    }
}

impl<const N: usize> From<[&str; N]> for Input {
    fn from(texts: [&str; N]) -> Self {
        Input::Texts(texts.iter().map(|t| t.to_string()).collect())
    }
}

impl From<Vec<&str>> for Input {
    fn from(texts: Vec<&str>) -> Self {
        Input::from(texts.as_slice())
    }
}

impl From<Vec<String>> for Input {
    fn from(texts: Vec<String>) -> Self {
        Input::Texts(texts)
    }
}

impl From<Vec<ChatMessage>> for Input {
    fn from(conversation: Vec<ChatMessage>) -> Self {
        Input::Conversations(vec![conversation])
    }
}

impl From<&[ChatMessage]> for Input {
    fn from(conversation: &[ChatMessage]) -> Self {
        Input::Conversations(vec![conversation.to_vec()])
    }
}

impl From<Vec<Vec<ChatMessage>>> for Input {
    fn from(conversations: Vec<Vec<ChatMessage>>) -> Self {
        Input::Conversations(conversations)
    }
}

impl From<Vec<u32>> for Input {
    fn from(ids: Vec<u32>) -> Self {
        Input::Ids(vec![ids])
    }
}

impl From<&[u32]> for Input {
    fn from(ids: &[u32]) -> Self {
        Input::Ids(vec![ids.to_vec()])
    }
}

impl From<Vec<Vec<u32>>> for Input {
    fn from(rows: Vec<Vec<u32>>) -> Self {
        Input::Ids(rows)
    }
}
