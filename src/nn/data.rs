//! Character-level text data (nanoGPT's `shakespeare_char`): the vocabulary is the sorted set of characters
//! in the text, the first 90 % of the encoded text is the training split and the rest validation.

use crate::error::{Error, Result};
use crate::nn::rng::Rng;

/// Where the standard Tiny Shakespeare corpus is downloaded from (Karpathy's char-rnn repository).
pub const TINY_SHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
/// The sha256 of that file (1,115,394 characters), checked after every download.
pub const TINY_SHAKESPEARE_SHA256: &str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";

/// Which split a batch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The first 90 %.
    Train,
    /// The last 10 %.
    Val,
}

/// An encoded text with its character vocabulary.
#[derive(Clone, Debug)]
pub struct CharData {
    vocab: Vec<char>,
    train: Vec<u32>,
    val: Vec<u32>,
}

impl CharData {
    /// Build the vocabulary and the 90/10 split; the text must be long enough for `block + 1` tokens in each
    /// split (checked when sampling).
    pub fn from_text(text: &str) -> Result<CharData> {
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        if vocab.is_empty() {
            return Err(Error::InvalidArgument { op: "CharData", name: "text", detail: "the text is empty".into() });
        }
        let ids: Vec<u32> = text.chars().map(|ch| vocab.binary_search(&ch).unwrap_or(0) as u32).collect();
        let n = ids.len() * 9 / 10;
        Ok(CharData { vocab, train: ids[..n].to_vec(), val: ids[n..].to_vec() })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The characters, in id order.
    pub fn vocab(&self) -> &[char] {
        &self.vocab
    }

    /// Tokens in a split.
    pub fn len(&self, split: Split) -> usize {
        self.split(split).len()
    }

    /// Whether the text had no characters (never true for a constructed value).
    pub fn is_empty(&self) -> bool {
        self.train.is_empty() && self.val.is_empty()
    }

    fn split(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Ids of `text`; characters outside the vocabulary are an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|ch| {
                self.vocab.binary_search(&ch).map(|i| i as u32).map_err(|_| Error::InvalidArgument {
                    op: "CharData::encode",
                    name: "text",
                    detail: format!("{ch:?} is not in the vocabulary"),
                })
            })
            .collect()
    }

    /// The text of `ids` (unknown ids become '?').
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| self.vocab.get(i as usize).copied().unwrap_or('?')).collect()
    }

    /// nanoGPT's `get_batch`: `batch` random windows; inputs `x[i..i+block]`, targets `x[i+1..i+block+1]`,
    /// row-major `[batch, block]`.
    pub fn batch(&self, split: Split, rng: &mut Rng, batch: usize, block: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let data = self.split(split);
        if data.len() <= block + 1 {
            return Err(Error::InvalidArgument {
                op: "CharData::batch",
                name: "block",
                detail: format!("the {split:?} split has {} tokens, a window needs {}", data.len(), block + 2),
            });
        }
        let (mut x, mut y) = (Vec::with_capacity(batch * block), Vec::with_capacity(batch * block));
        for _ in 0..batch {
            let i = rng.below((data.len() - block) as u64) as usize;
            x.extend_from_slice(&data[i..i + block]);
            y.extend_from_slice(&data[i + 1..i + block + 1]);
        }
        Ok((x, y))
    }
}
