//! The model's tokenizer, built from GGUF metadata the way llama.cpp reads it.
//!
//! GGUF stores a byte-level BPE vocabulary (`tokenizer.ggml.tokens`, `merges`, `token_type`)
//! and names its pre-tokenizer (`tokenizer.ggml.pre`); this module rebuilds the equivalent
//! Hugging Face `tokenizers` pipeline so ids match llama.cpp's. Control and user-defined
//! tokens become added tokens, so `<|im_start|>` written in a prompt is one token.
use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// GGUF token types (llama.cpp's `llama_token_type`).
pub mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// A control token (`<|im_end|>`): markup, never text.
    pub const CONTROL: i32 = 3;
    /// A user-defined token (`<tool_call>`): literal text matched whole.
    pub const USER_DEFINED: i32 = 4;
    /// A reserved slot that is not part of the vocabulary.
    pub const UNUSED: i32 = 5;
}

/// Qwen2's split regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`); the case-insensitive
/// contractions are spelled out as classes, which every regex engine reads the same way.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex: as Qwen2's but digits in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The vocabulary as GGUF describes it.
#[derive(Debug, Clone)]
pub struct VocabSpec {
    /// Token texts, indexed by id (byte-level encoded for normal tokens).
    pub tokens: Vec<String>,
    /// GGUF token type of each token ([`token_type`]).
    pub types: Vec<i32>,
    /// BPE merges, in rank order.
    pub merges: Vec<(String, String)>,
    /// `tokenizer.ggml.pre`: which pre-tokenizer the model was trained with.
    pub pre: String,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// End-of-turn token, when the model names one apart from EOS.
    pub eot: Option<u32>,
    /// Whether prompts start with BOS.
    pub add_bos: bool,
}

/// A tokenizer could not be built from the vocabulary.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The pre-tokenizer named in the GGUF is not one we know the regex of.
    #[error(
        "tokenizer.ggml.pre `{0}` is not supported (known: qwen2, llama3, llama-bpe, smollm, starcoder, gpt-2, default)"
    )]
    UnknownPre(String),
    /// `tokenizers` rejected the vocabulary or merges.
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
    /// Encoding failed.
    #[error("cannot tokenize: {0}")]
    Encode(String),
}

/// Text to ids and ids to bytes for one model.
pub struct ModelTokenizer {
    inner: Tokenizer,
    pieces: Vec<Vec<u8>>,
    control: Vec<bool>,
    bos: Option<u32>,
    add_bos: bool,
    eog: HashSet<u32>,
    bos_text: Option<String>,
    eos_text: Option<String>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab", &self.pieces.len())
            .field("bos", &self.bos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Texts llama.cpp treats as end of generation when they are control tokens
/// (`llama_vocab::impl::load`), so chat models stop at the end of their turn.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<|end_of_text|>",
    "<|return|>",
    "<|call|>",
];

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others are
/// shifted to code points from 256 up so every byte has a visible character.
fn byte_level_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// The byte each character of GPT-2's table stands for.
fn byte_level_inverse() -> std::collections::HashMap<char, u8> {
    byte_level_chars()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// The bytes a byte-level token text stands for; characters outside the table (never seen
/// in well-formed vocabularies) keep their UTF-8 bytes.
fn byte_level_decode(text: &str, inverse: &std::collections::HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match inverse.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// The bytes of a SentencePiece-style token: `▁` is a space, `<0xNN>` one byte.
fn sentencepiece_piece(token: &str) -> Vec<u8> {
    if let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(byte) = u8::from_str_radix(hex, 16)
    {
        return vec![byte];
    }
    token.replace('\u{2581}', " ").into_bytes()
}

/// Whether a `tokenizer.json` post-processor puts `token` first in single sequences
/// (`TemplateProcessing`, possibly inside a `Sequence`).
fn post_processor_starts_with(processor: Option<&serde_json::Value>, token: &str) -> bool {
    let Some(processor) = processor else {
        return false;
    };
    if let Some(first) = processor.get("single").and_then(|s| s.get(0)) {
        return first
            .get("SpecialToken")
            .and_then(|t| t.get("id"))
            .and_then(|id| id.as_str())
            == Some(token);
    }
    processor
        .get("processors")
        .and_then(|p| p.as_array())
        .is_some_and(|list| {
            list.iter()
                .any(|p| post_processor_starts_with(Some(p), token))
        })
}

fn split(regex: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map(Into::into)
    .map_err(|e| TokenizerError::Build(e.to_string()))
}

impl ModelTokenizer {
    /// Builds the tokenizer of `spec`.
    pub fn new(spec: &VocabSpec) -> Result<Self, TokenizerError> {
        let kind = |id: usize| spec.types.get(id).copied().unwrap_or(token_type::NORMAL);
        let vocab: Vocab = spec
            .tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| kind(*i) != token_type::UNUSED)
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        // Llama 3 takes a word that is a whole vocabulary entry as is, merges or not.
        let ignore_merges = matches!(spec.pre.as_str(), "llama3" | "llama-bpe" | "llama-v3");
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, spec.merges.clone())
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        let pre: PreTokenizerWrapper = match spec.pre.as_str() {
            "qwen2" | "deepseek-r1-qwen" => {
                inner
                    .with_normalizer(Some(NFC))
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
                Sequence::new(vec![
                    split(QWEN2_SPLIT)?,
                    ByteLevel::new(false, false, false).into(),
                ])
                .into()
            }
            "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => Sequence::new(vec![
                split(LLAMA3_SPLIT)?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            // llama.cpp splits digits one by one, then applies GPT-2's regex.
            "smollm" | "starcoder" | "refact" | "codeshell" => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            "gpt-2" | "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
            other => return Err(TokenizerError::UnknownPre(other.to_string())),
        };
        inner.with_pre_tokenizer(Some(pre));
        let mut specials = Vec::new();
        let mut literals = Vec::new();
        for (i, text) in spec.tokens.iter().enumerate() {
            let token = |special| {
                AddedToken::from(text.clone(), special)
                    .normalized(false)
                    .single_word(false)
            };
            match kind(i) {
                token_type::CONTROL => specials.push(token(true)),
                token_type::USER_DEFINED => literals.push(token(false)),
                _ => {}
            }
        }
        inner
            .add_special_tokens(specials)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        inner
            .add_tokens(literals)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;

        let inverse = byte_level_inverse();
        let literal = |i: usize| matches!(kind(i), token_type::CONTROL | token_type::USER_DEFINED);
        let pieces = spec
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if literal(i) {
                    t.as_bytes().to_vec()
                } else {
                    byte_level_decode(t, &inverse)
                }
            })
            .collect();
        let control: Vec<bool> = (0..spec.tokens.len())
            .map(|i| kind(i) == token_type::CONTROL)
            .collect();
        Ok(Self::assemble(
            inner,
            pieces,
            control,
            spec.bos,
            spec.add_bos,
            spec.eos,
            spec.eot.into_iter(),
        ))
    }

    /// The tokenizer of a Hugging Face folder: `tokenizer.json` (byte-level BPE, or
    /// SentencePiece-style BPE with byte fallback), BOS/EOS from `tokenizer_config.json`, and
    /// `eos_ids` (from `generation_config.json` and `config.json`) as end of generation.
    pub fn from_hf_dir(dir: &Path, eos_ids: &[u32]) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            TokenizerError::Build(format!(
                "{} cannot be read ({e}); the folder needs its tokenizer.json",
                path.display()
            ))
        })?;
        let inner = Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TokenizerError::Build(e.to_string()))?;
        let decoder = json
            .get("decoder")
            .map(|d| d.to_string())
            .unwrap_or_default();
        let byte_level = decoder.contains("ByteLevel");
        if !byte_level && !decoder.contains("ByteFallback") && !decoder.contains("Metaspace") {
            return Err(TokenizerError::Build(format!(
                "tokenizer.json's decoder is neither byte-level nor SentencePiece-style BPE: {decoder}"
            )));
        }
        let config: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let token_text = |key: &str| match config.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => {
                o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
            }
            _ => None,
        };
        let bos = token_text("bos_token").and_then(|t| inner.token_to_id(&t));
        let eos = token_text("eos_token").and_then(|t| inner.token_to_id(&t));
        let add_bos = match config.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(add) => add,
            None => bos
                .and_then(|b| inner.id_to_token(b))
                .is_some_and(|b| post_processor_starts_with(json.get("post_processor"), &b)),
        };
        let added = inner.get_added_tokens_decoder();
        let size = inner.get_vocab_size(true);
        let inverse = byte_level_inverse();
        let mut pieces = Vec::with_capacity(size);
        let mut control = Vec::with_capacity(size);
        for id in 0..size as u32 {
            let (piece, special) = match added.get(&id) {
                Some(token) => (token.content.as_bytes().to_vec(), token.special),
                None => match inner.id_to_token(id) {
                    Some(t) if byte_level => (byte_level_decode(&t, &inverse), false),
                    Some(t) => (sentencepiece_piece(&t), false),
                    None => (Vec::new(), false),
                },
            };
            pieces.push(piece);
            control.push(special);
        }
        Ok(Self::assemble(
            inner,
            pieces,
            control,
            bos,
            add_bos,
            eos.or_else(|| eos_ids.first().copied()),
            eos_ids.iter().copied(),
        ))
    }

    /// The tokenizer from its parts; end of generation is `eos`, `more_eog` and the control
    /// tokens llama.cpp treats as such.
    fn assemble(
        inner: Tokenizer,
        pieces: Vec<Vec<u8>>,
        control: Vec<bool>,
        bos: Option<u32>,
        add_bos: bool,
        eos: Option<u32>,
        more_eog: impl Iterator<Item = u32>,
    ) -> Self {
        let mut eog: HashSet<u32> = eos.into_iter().chain(more_eog).collect();
        for (i, piece) in pieces.iter().enumerate() {
            if control[i] && EOG_TEXTS.iter().any(|t| t.as_bytes() == piece.as_slice()) {
                eog.insert(i as u32);
            }
        }
        let text_of = |id: Option<u32>| {
            id.and_then(|i| pieces.get(i as usize))
                .map(|p| String::from_utf8_lossy(p).into_owned())
        };
        let (bos_text, eos_text) = (text_of(bos), text_of(eos));
        ModelTokenizer {
            inner,
            pieces,
            control,
            bos,
            add_bos,
            eog,
            bos_text,
            eos_text,
        }
    }

    /// The `tokenizers` tokenizer, e.g. to write it as `tokenizer.json`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The BOS id and whether prompts start with it.
    pub fn bos(&self) -> (Option<u32>, bool) {
        (self.bos, self.add_bos)
    }

    /// Ids of `text`, special tokens written in it parsed as such; BOS first when `add_bos`
    /// and the model uses one (as llama.cpp's `llama_tokenize`).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos
            && self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The bytes token `id` stands for (its text for control tokens).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control token (markup, not text).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation tokens.
    pub fn eog(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// BOS text, for chat templates.
    pub fn bos_text(&self) -> Option<&str> {
        self.bos_text.as_deref()
    }

    /// EOS text, for chat templates.
    pub fn eos_text(&self) -> Option<&str> {
        self.eos_text.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(pre: &str) -> VocabSpec {
        // Byte-level texts: "Ġ" is the space byte.
        let tokens: Vec<String> = [
            "h",
            "e",
            "l",
            "o",
            "Ġ",
            "1",
            "2",
            "he",
            "ll",
            "hell",
            "hello",
            "Ġhello",
            "<|im_end|>",
            "<tool>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut types = vec![token_type::NORMAL; tokens.len()];
        types[12] = token_type::CONTROL;
        types[13] = token_type::USER_DEFINED;
        VocabSpec {
            tokens,
            types,
            merges: [
                ("h", "e"),
                ("l", "l"),
                ("he", "ll"),
                ("hell", "o"),
                ("Ġ", "hello"),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            pre: pre.into(),
            bos: Some(12),
            eos: Some(12),
            eot: None,
            add_bos: true,
        }
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let table = byte_level_chars();
        let distinct: HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
    }

    #[test]
    fn merges_specials_and_pieces() {
        let t = ModelTokenizer::new(&tiny("smollm")).unwrap();
        assert_eq!(t.encode("hello hello", false).unwrap(), vec![10, 11]);
        assert_eq!(t.encode("hello<|im_end|>", true).unwrap(), vec![12, 10, 12]);
        assert_eq!(t.encode("<tool>12", false).unwrap(), vec![13, 5, 6]);
        assert_eq!(t.piece(11), b" hello");
        assert_eq!(t.piece(12), b"<|im_end|>");
        assert!(t.is_control(12) && !t.is_control(13));
        assert!(t.is_eog(12) && !t.is_eog(10));
        assert_eq!(t.piece(999), b"");
    }

    #[test]
    fn sentencepiece_tokens_and_bos_post_processors() {
        assert_eq!(sentencepiece_piece("\u{2581}Hello"), b" Hello");
        assert_eq!(sentencepiece_piece("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_piece("<0xZZ>"), b"<0xZZ>");
        let template = serde_json::json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}]});
        assert!(post_processor_starts_with(Some(&template), "<s>"));
        assert!(!post_processor_starts_with(
            Some(&template),
            "<|begin_of_text|>"
        ));
        let sequence = serde_json::json!({"type": "Sequence",
            "processors": [{"type": "ByteLevel"}, template]});
        assert!(post_processor_starts_with(Some(&sequence), "<s>"));
        assert!(!post_processor_starts_with(None, "<s>"));
    }

    #[test]
    fn unknown_pre_tokenizer_is_named() {
        let e = ModelTokenizer::new(&tiny("martian")).unwrap_err();
        assert!(e.to_string().contains("martian"), "{e}");
        for pre in ["qwen2", "llama-bpe", "gpt-2"] {
            assert!(ModelTokenizer::new(&tiny(pre)).is_ok(), "{pre}");
        }
    }
}
